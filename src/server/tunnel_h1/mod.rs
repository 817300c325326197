//! The server's HTTP/1.1 client on tunnel streams (work in progress on branch `relay-h1`: the
//! codec is done and tested; the exchange over a `MuxStream` and the relay's use of it are not).

pub(crate) mod codec;
