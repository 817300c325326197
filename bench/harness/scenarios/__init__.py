"""The scenarios, one module per group, each a mixin of scenario methods on the one Run object
(which holds the rows, CPU rows, raw lines, failures and memory readings the report prints):

    base.py             Run's state, rows, sanity checks, memory rows (RunBase)
    bulk.py             S1 bulk, S4 head-of-line (probe under bulk), S10 bulk over the WAN
    small_requests.py   S2 small requests, S3 one client (wrk, direct vs tunnel, ABBA rounds)
    wan.py              S5 round trips through the delay proxy
    slow_reader.py      S6 a slow reader and the server's memory
    many_agents.py      S7 idle agent sessions on a server of its own
    restart.py          S8 server restarts
    many_streams.py     S9 watch streams on a tunnel of its own (HTTP/1 and HTTP/2 clients)
    extension_flood.py  S11 a flood of the extensions listener while the tunnel is probed
    floors.py           F what the libraries cost (examples/floors)

Mixins rather than functions: the scenarios share state (S4 compares with S1's and S3's numbers,
S5 uses S2/S3's wrk_pair, S10 S1's timed_bulk) through `self`, as they did in one class.
"""

from .base import RunBase
from .bulk import BulkScenarios
from .extension_flood import ExtensionFlood
from .floors import Floors
from .many_agents import ManyAgents
from .many_streams import ManyStreams
from .restart import Restart
from .slow_reader import SlowReader
from .small_requests import SmallRequests
from .wan import WanLatency


class Run(BulkScenarios, SmallRequests, WanLatency, ExtensionFlood, SlowReader, Restart, Floors, ManyAgents,
          ManyStreams, RunBase):
    """One benchmark run: bench/run calls the scenario methods in its order."""
