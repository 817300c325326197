//! The server side of SPDY/3.1 as Kubernetes streaming uses it (client-go's `spdystream`): the
//! client opens every stream (SYN_STREAM, its headers saying what the stream is for, e.g.
//! `streamtype: stdout`), the server accepts each with an empty SYN_REPLY, and either side
//! half-closes its direction of a stream with an empty DATA frame flagged FIN. PINGs are echoed;
//! flow control (WINDOW_UPDATE) and SETTINGS are not used by `spdystream` and are ignored.
//!
//! A [`Session`] runs over any byte stream: the upgraded connection of a `POST` with
//! `Upgrade: SPDY/3.1`, or the bytes carried in a WebSocket's binary messages (port-forward's
//! `SPDY/3.1+portforward.k8s.io` tunnel, see [`bridge_websocket`]).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::zlib::{spdy_dictionary, Inflater, StoredDeflater};

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: the stream is refused.
const REFUSED_STREAM: u32 = 3;
/// The most one DATA frame carries here (the length field allows 16 MiB).
const MAX_DATA: usize = 32 * 1024;

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    /// Its headers, names lower-case as SPDY sends them.
    pub headers: Vec<(String, String)>,
    /// What the client sends on it; ends when the client half-closes or resets it.
    pub data: mpsc::UnboundedReceiver<Bytes>,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends on the session's streams (frames are written in the order they are sent).
#[derive(Clone)]
pub struct Sender(mpsc::UnboundedSender<Vec<u8>>);

impl Sender {
    /// `bytes` on stream `id`.
    pub fn data(&self, id: u32, bytes: &[u8]) {
        for chunk in bytes.chunks(MAX_DATA) {
            self.frame(data_frame(id, 0, chunk));
        }
    }

    /// Half-closes our direction of stream `id`.
    pub fn fin(&self, id: u32) {
        self.frame(data_frame(id, FLAG_FIN, &[]));
    }

    /// Resets stream `id`.
    pub fn reset(&self, id: u32) {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&REFUSED_STREAM.to_be_bytes());
        self.frame(control_frame(RST_STREAM, 0, &body));
    }

    fn frame(&self, frame: Vec<u8>) {
        // The writer is gone only once the connection is: nothing left to tell.
        let _ = self.0.send(frame);
    }
}

/// A running SPDY server session.
pub struct Session {
    /// Streams in the order the client opened them (each already accepted); ends when the
    /// client goes away.
    pub streams: mpsc::UnboundedReceiver<Stream>,
    pub sender: Sender,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Session {
    pub fn start<S>(io: S) -> Session
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, mut write) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let sender = Sender(out_tx);
        let for_reader = sender.clone();
        let reader = tokio::spawn(async move {
            if let Err(error) = read_frames(read, for_reader, streams_tx).await {
                eprintln!("fake kube-apiserver: SPDY session ends: {error}");
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if write.write_all(&frame).await.is_err() || write.flush().await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        Session {
            streams,
            sender,
            reader,
            writer,
        }
    }

    /// Ends the session once everything sent so far is written: waits (at most `grace`) for
    /// the client to hang up, as it does once it has what it wanted, then closes.
    pub async fn finish(self, grace: Duration) {
        let Session {
            streams,
            sender,
            mut reader,
            mut writer,
        } = self;
        drop((streams, sender));
        let _ = tokio::time::timeout(grace, &mut reader).await;
        reader.abort();
        // The reader's sender is gone with it, so the writer drains and stops.
        let _ = tokio::time::timeout(grace, &mut writer).await;
        writer.abort();
    }
}

async fn read_frames<R>(
    mut read: R,
    sender: Sender,
    streams: mpsc::UnboundedSender<Stream>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
{
    let mut inflater = Inflater::new(spdy_dictionary());
    let mut deflater = StoredDeflater::default();
    let mut open: HashMap<u32, mpsc::UnboundedSender<Bytes>> = HashMap::new();
    loop {
        let mut head = [0u8; 8];
        match read.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut body = vec![0u8; len];
        read.read_exact(&mut body)
            .await
            .map_err(|e| format!("frame body: {e}"))?;
        let word = |at: usize| -> Result<u32, String> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| format!("frame of {len} bytes cut short"))
        };

        if head[0] & 0x80 == 0 {
            // DATA
            let id = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
            if let Some(stream) = open.get(&id) {
                if !body.is_empty() {
                    let _ = stream.send(Bytes::from(body));
                }
            }
            if flags & FLAG_FIN != 0 {
                open.remove(&id);
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(format!("SPDY version {version}, not 3"));
        }
        match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let block = body.get(10..).ok_or("SYN_STREAM cut short")?;
                let headers = parse_headers(&inflater.inflate(block)?)?;
                // Accept it before anything can be sent on it.
                let mut reply = id.to_be_bytes().to_vec();
                reply.extend_from_slice(&deflater.deflate(&0u32.to_be_bytes()));
                sender.frame(control_frame(SYN_REPLY, 0, &reply));
                let (tx, rx) = mpsc::unbounded_channel();
                if flags & FLAG_FIN == 0 {
                    open.insert(id, tx);
                }
                let stream = Stream {
                    id,
                    headers,
                    data: rx,
                };
                if streams.send(stream).is_err() {
                    // Nobody serves this session any more.
                    sender.reset(id);
                }
            }
            RST_STREAM => {
                open.remove(&(word(0)? & 0x7fff_ffff));
            }
            HEADERS => {
                // Nothing to do with them, but they advance the shared compression state.
                inflater.inflate(body.get(4..).ok_or("HEADERS cut short")?)?;
            }
            PING => sender.frame([&head[..], &body].concat()),
            GOAWAY => return Ok(()),
            // SETTINGS, WINDOW_UPDATE, and replies the client has no business sending.
            _ => {}
        }
    }
}

/// A SPDY/3 name/value block: a u32 count, then each name and value after its u32 length
/// (a value with several parts separates them with NUL bytes; kept as they are here).
fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn take<'a>(rest: &mut &'a [u8], len: usize) -> Result<&'a [u8], String> {
        let (value, tail) = rest.split_at_checked(len).ok_or("header block cut short")?;
        *rest = tail;
        Ok(value)
    }
    fn word(rest: &mut &[u8]) -> Result<usize, String> {
        let bytes = take(rest, 4)?;
        Ok(u32::from_be_bytes(bytes.try_into().expect("4 bytes")) as usize)
    }
    let mut rest = block;
    let count = word(&mut rest)?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = word(&mut rest)?;
        let name = String::from_utf8_lossy(take(&mut rest, len)?).into_owned();
        let len = word(&mut rest)?;
        let value = String::from_utf8_lossy(take(&mut rest, len)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80, 0x03];
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&u32::try_from(body.len()).expect("short").to_be_bytes()[1..]);
    frame.extend_from_slice(body);
    frame
}

fn data_frame(id: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = id.to_be_bytes().to_vec();
    frame.push(flags);
    frame.extend_from_slice(&u32::try_from(data.len()).expect("short").to_be_bytes()[1..]);
    frame.extend_from_slice(data);
    frame
}

/// Carries a byte stream in a WebSocket's binary messages, as client-go's SPDY-over-WebSocket
/// tunnel does (each write one message, a message's bytes read in order): returns the tunnel's
/// end of the byte stream. The client closing the WebSocket ends the stream; the stream's
/// owner dropping it closes the WebSocket normally (1000).
pub fn bridge_websocket<S>(mut socket: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut read, mut write) = tokio::io::split(ours);
        let mut buffer = vec![0u8; MAX_DATA];
        loop {
            tokio::select! {
                message = socket.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        if write.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    // Gone: dropping our end is the stream's EOF.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                read = read.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let message = Message::Binary(Bytes::copy_from_slice(&buffer[..n]));
                        if socket.send(message).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if socket.close(Some(close)).await.is_ok() {
            let drain = async { while let Some(Ok(_)) = socket.next().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
    });
    theirs
}
