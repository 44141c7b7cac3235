//! The extended query protocol as a pooler must track it (PostgreSQL docs §55.2.3), with no
//! I/O: what each client message becomes on the server connection it is lent, and which
//! server responses go to the client, are swallowed, or are made up by the proxy.
//!
//! Two things make pooling invisible to clients:
//!
//! - **Prepared statements.** A client's named statement `s1` is prepared on the server as
//!   `lakebed_<hash of query and parameter types>`, so that clients sharing a server
//!   connection never collide (no 42P05) and a statement prepared once on a connection
//!   serves every client that prepares the same text. When a client binds or describes a
//!   statement that the connection it is lent has never seen, the proxy injects the `Parse`
//!   first and swallows its `ParseComplete` (no 26000). A client `Parse` for a statement the
//!   connection already has is answered by the proxy itself, and a client `Close` of a
//!   statement is answered by the proxy while the server keeps the statement for others.
//! - **Ordering.** Every message sent to the server pushes what its answer will be onto a
//!   queue ([`Expect`]); answers the proxy makes itself wait in that queue for their turn.
//!   After an `ErrorResponse` the server ignores everything up to `Sync`, and so does the queue.
//!
//! Row data (`DataRow`, `CopyData`) is framed, never decoded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::pqproto::{put_message, split_cstr};

/// One protocol message: tag and body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The type byte.
    pub tag: u8,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// Appends the message as it goes on the wire.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_message(out, self.tag, |b| b.extend_from_slice(&self.body));
    }
}

/// What answers a message sent to the server, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// The client's own message: forward the server's answer, which ends with `ends_on`.
    Forward {
        ends_on: Ends,
        parse_of: Option<u64>,
    },
    /// A `Parse` the proxy injected: swallow its `ParseComplete`.
    SwallowParse { statement: u64 },
    /// An answer the proxy makes, sent when its turn comes.
    Made(u8),
    /// The session-state query sent at lend time: swallow all up to its `ReadyForQuery`.
    SwallowUntilReady,
}

/// How a forwarded message's answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// `ParseComplete`, `BindComplete` or `CloseComplete`: one message with this tag.
    Tag(u8),
    /// Describe: `RowDescription` or `NoData` (after `ParameterDescription` for statements).
    Description,
    /// Execute: `CommandComplete`, `EmptyQueryResponse` or `PortalSuspended`.
    Execution,
    /// Sync, simple Query, FunctionCall: `ReadyForQuery`.
    Ready,
}

impl Ends {
    fn done_by(self, tag: u8) -> bool {
        match self {
            Self::Tag(t) => tag == t,
            Self::Description => tag == b'T' || tag == b'n',
            Self::Execution => matches!(tag, b'C' | b'I' | b's'),
            Self::Ready => tag == b'Z',
        }
    }

    /// Whether an `ErrorResponse` ends this answer (extended-protocol messages) or not
    /// (Query and Sync keep going to `ReadyForQuery`).
    fn ended_by_error(self) -> bool {
        self != Self::Ready
    }
}

/// A client's named prepared statement.
#[derive(Debug, Clone)]
struct Statement {
    /// Hash of (query, parameter types): names the statement on servers.
    id: u64,
    /// The `Parse` body with the server-side name, to inject where needed.
    parse: Bytes,
}

/// The prepared statements a client believes exist (its names), across connections.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Statement>,
}

/// What one server connection has prepared, by statement id.
#[derive(Debug, Default)]
pub struct ServerStatements {
    prepared: HashSet<u64>,
}

impl ServerStatements {
    /// Forgets everything (after `DISCARD ALL`, or a reset).
    pub fn clear(&mut self) {
        self.prepared.clear();
    }
}

/// The server-side name of statement `id`.
fn server_name(id: u64) -> String {
    format!("lakebed_{id:016x}")
}

/// A protocol error in a client message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

/// The traffic of one lending of a server connection: the expectation queue, and the
/// transaction status last reported.
#[derive(Debug, Default)]
pub struct Exchange {
    queue: VecDeque<Expect>,
    /// `ReadyForQuery` status of the last one seen: `I`, `T` or `E`.
    pub status: Option<u8>,
    /// Whether the server is in COPY (between `G`/`H` and the end of the copy).
    copying: bool,
    /// Whether any server answer reached the client since lending (then the client's
    /// messages cannot be replayed on another connection).
    pub answered: bool,
    /// A DISCARD ALL or DEALLOCATE ALL ran: the connection's statements are gone.
    discarded: bool,
    /// Extended-protocol messages were sent since the last `Sync`: the server is inside
    /// an extended-query cycle, even if every answer is in.
    unsynced: bool,
    /// The server sent a FATAL error (it is about to close the connection); the client
    /// has it and needs no other word.
    pub fatal: bool,
    /// Session pooling: statements keep the client's names (the client has the connection
    /// to itself until it leaves, and it is reset then).
    pub keep_names: bool,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Send it to the client.
    Forward,
    /// Drop it.
    Swallow,
}

impl Exchange {
    /// A fresh exchange; `keep_names` for session pooling (see the field).
    pub fn new(keep_names: bool) -> Self {
        Self {
            keep_names,
            ..Self::default()
        }
    }

    /// Whether the server connection can go back to the pool: every answer is in, no
    /// transaction is open and no COPY runs.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && !self.copying
            && !self.unsynced
            && self.status != Some(b'T')
            && self.status != Some(b'E')
    }

    /// Whether the connection is in a state the proxy cannot clean up with a query: answers
    /// still due, or an extended-protocol cycle without its `Sync`.
    pub fn is_mid_exchange(&self) -> bool {
        self.is_waiting() || self.unsynced
    }

    /// Whether answers are still due.
    pub fn is_waiting(&self) -> bool {
        !self.queue.is_empty() || self.copying
    }

    /// Queues the session-state query (a simple Query) sent before the client's messages.
    pub fn expect_reset(&mut self) {
        self.queue.push_back(Expect::SwallowUntilReady);
    }

    /// Translates one client message for the server connection. Appends what to send to
    /// `to_server`, queues what will answer it, and returns `false` for `Terminate`.
    ///
    /// # Errors
    ///
    /// [`Malformed`] when a message the proxy must read is not well formed.
    pub fn client_message(
        &mut self,
        msg: &Message,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
        to_server: &mut Vec<u8>,
    ) -> Result<bool, Malformed> {
        match msg.tag {
            b'P' | b'B' | b'D' | b'C' | b'E' => self.unsynced = true,
            b'S' => self.unsynced = false,
            _ => {}
        }
        if self.keep_names && matches!(msg.tag, b'P' | b'B' | b'D' | b'C') {
            msg.encode(to_server);
            self.forward(match msg.tag {
                b'P' => Ends::Tag(b'1'),
                b'B' => Ends::Tag(b'2'),
                b'C' => Ends::Tag(b'3'),
                _ => Ends::Description,
            });
            return Ok(true);
        }
        match msg.tag {
            b'P' => self.parse(msg, client, server, to_server)?,
            b'B' => {
                // Bind: portal name, statement name, rest.
                let (portal, rest) = split_cstr(&msg.body).ok_or(Malformed("Bind"))?;
                let (stmt, rest) = split_cstr(rest).ok_or(Malformed("Bind"))?;
                let name = self.use_statement(stmt, client, server, to_server)?;
                let mut body = Vec::with_capacity(msg.body.len() + 24);
                body.extend_from_slice(portal);
                body.push(0);
                body.extend_from_slice(name.as_bytes());
                body.push(0);
                body.extend_from_slice(rest);
                Message {
                    tag: b'B',
                    body: body.into(),
                }
                .encode(to_server);
                self.forward(Ends::Tag(b'2'));
            }
            b'D' => {
                let (&kind, rest) = msg.body.split_first().ok_or(Malformed("Describe"))?;
                let (name, _) = split_cstr(rest).ok_or(Malformed("Describe"))?;
                if kind == b'S' {
                    let name = self.use_statement(name, client, server, to_server)?;
                    let mut body = vec![b'S'];
                    body.extend_from_slice(name.as_bytes());
                    body.push(0);
                    Message {
                        tag: b'D',
                        body: body.into(),
                    }
                    .encode(to_server);
                } else {
                    msg.encode(to_server);
                }
                self.forward(Ends::Description);
            }
            b'C' => {
                let (&kind, rest) = msg.body.split_first().ok_or(Malformed("Close"))?;
                let (name, _) = split_cstr(rest).ok_or(Malformed("Close"))?;
                if kind == b'S' && !name.is_empty() {
                    // The server keeps it for other clients; the client sees it closed.
                    client
                        .by_name
                        .remove(&String::from_utf8_lossy(name).into_owned());
                    self.queue.push_back(Expect::Made(b'3'));
                } else {
                    msg.encode(to_server);
                    self.forward(Ends::Tag(b'3'));
                }
            }
            b'E' => {
                msg.encode(to_server);
                self.forward(Ends::Execution);
            }
            b'S' | b'Q' | b'F' => {
                if msg.tag == b'Q' && discards_statements(&msg.body) {
                    client.by_name.clear();
                    self.discarded = true;
                }
                msg.encode(to_server);
                self.forward(Ends::Ready);
            }
            b'X' => return Ok(false),
            // Flush, and CopyData / CopyDone / CopyFail: no answer of their own.
            _ => msg.encode(to_server),
        }
        Ok(true)
    }

    fn forward(&mut self, ends_on: Ends) {
        self.queue.push_back(Expect::Forward {
            ends_on,
            parse_of: None,
        });
    }

    fn parse(
        &mut self,
        msg: &Message,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
        to_server: &mut Vec<u8>,
    ) -> Result<(), Malformed> {
        let (name, rest) = split_cstr(&msg.body).ok_or(Malformed("Parse"))?;
        if name.is_empty() {
            msg.encode(to_server);
            self.forward(Ends::Tag(b'1'));
            return Ok(());
        }
        let id = statement_id(rest);
        let server_name = server_name(id);
        let mut body = Vec::with_capacity(server_name.len() + 1 + rest.len());
        body.extend_from_slice(server_name.as_bytes());
        body.push(0);
        body.extend_from_slice(rest);
        let parse: Bytes = body.into();
        client.by_name.insert(
            String::from_utf8_lossy(name).into_owned(),
            Statement {
                id,
                parse: parse.clone(),
            },
        );
        if server.prepared.contains(&id) {
            self.queue.push_back(Expect::Made(b'1'));
        } else {
            server.prepared.insert(id);
            Message {
                tag: b'P',
                body: parse,
            }
            .encode(to_server);
            self.queue.push_back(Expect::Forward {
                ends_on: Ends::Tag(b'1'),
                parse_of: Some(id),
            });
        }
        Ok(())
    }

    /// The server-side name for client statement `name`, injecting its `Parse` if this
    /// connection lacks it. Unknown names pass through, so the server answers 26000 as
    /// Postgres would.
    fn use_statement(
        &mut self,
        name: &[u8],
        client: &ClientStatements,
        server: &mut ServerStatements,
        to_server: &mut Vec<u8>,
    ) -> Result<String, Malformed> {
        let text = std::str::from_utf8(name).map_err(|_| Malformed("statement name"))?;
        if text.is_empty() {
            return Ok(String::new());
        }
        let Some(stmt) = client.by_name.get(text) else {
            return Ok(text.to_owned());
        };
        if !server.prepared.contains(&stmt.id) {
            server.prepared.insert(stmt.id);
            Message {
                tag: b'P',
                body: stmt.parse.clone(),
            }
            .encode(to_server);
            self.queue
                .push_back(Expect::SwallowParse { statement: stmt.id });
        }
        Ok(server_name(stmt.id))
    }

    /// Handles one server message: appends it to `to_client` unless it is swallowed, then
    /// any answers the proxy made whose turn has come. Returns whether it was forwarded.
    pub fn server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut ServerStatements,
        to_client: &mut Vec<u8>,
    ) -> bool {
        let verdict = self.decide(tag, server);
        if tag == b'Z' {
            self.status = body.first().copied();
        }
        if tag == b'E'
            && crate::pqproto::error_fields(body)
                .iter()
                .any(|(k, v)| *k == b'S' && (v == "FATAL" || v == "PANIC"))
        {
            self.fatal = true;
        }
        if verdict == Answer::Forward {
            put_message(to_client, tag, |b| b.extend_from_slice(body));
            self.answered = true;
        }
        self.emit_made(to_client);
        verdict == Answer::Forward
    }

    fn decide(&mut self, tag: u8, server: &mut ServerStatements) -> Answer {
        let verdict = match tag {
            // Asynchronous: notices, notifications, parameter changes.
            b'N' | b'A' | b'S' => match self.queue.front() {
                Some(Expect::SwallowUntilReady) | Some(Expect::SwallowParse { .. }) => {
                    Answer::Swallow
                }
                _ => Answer::Forward,
            },
            b'G' | b'H' | b'W' => {
                self.copying = true;
                Answer::Forward
            }
            b'E' => self.error(server),
            _ => {
                if tag == b'c' || tag == b'C' {
                    self.copying = false;
                }
                self.answer(tag)
            }
        };
        if tag == b'Z' && self.discarded {
            server.clear();
            self.discarded = false;
        }
        verdict
    }

    fn answer(&mut self, tag: u8) -> Answer {
        match self.queue.front().cloned() {
            Some(Expect::SwallowUntilReady) => {
                if tag == b'Z' {
                    self.queue.pop_front();
                }
                Answer::Swallow
            }
            Some(Expect::SwallowParse { .. }) => {
                if tag == b'1' {
                    self.queue.pop_front();
                }
                Answer::Swallow
            }
            Some(Expect::Forward { ends_on, .. }) => {
                if ends_on.done_by(tag) {
                    self.queue.pop_front();
                }
                Answer::Forward
            }
            // Nothing expected (or a made answer waiting): pass it on.
            Some(Expect::Made(_)) | None => Answer::Forward,
        }
    }

    /// An `ErrorResponse`: ends the current answer and, in the extended protocol, makes the
    /// server skip everything up to `Sync`; the queue skips with it.
    fn error(&mut self, server: &mut ServerStatements) -> Answer {
        let verdict = match self.queue.front().cloned() {
            Some(Expect::SwallowUntilReady) => return Answer::Swallow,
            Some(Expect::Forward {
                ends_on: Ends::Ready,
                ..
            })
            | None => return Answer::Forward,
            Some(Expect::SwallowParse { statement })
            | Some(Expect::Forward {
                parse_of: Some(statement),
                ..
            }) => {
                // The statement was not created on this connection after all.
                server.prepared.remove(&statement);
                Answer::Forward
            }
            Some(_) => Answer::Forward,
        };
        // Drop everything up to (not including) the next Sync: the server won't answer it.
        while let Some(front) = self.queue.front() {
            match front {
                Expect::Forward { ends_on, .. } if !ends_on.ended_by_error() => break,
                Expect::SwallowUntilReady => break,
                _ => {
                    self.queue.pop_front();
                }
            }
        }
        verdict
    }

    /// Sends the proxy's own answers that are at the front of the queue.
    fn emit_made(&mut self, to_client: &mut Vec<u8>) {
        while let Some(Expect::Made(tag)) = self.queue.front() {
            put_message(to_client, *tag, |_| {});
            self.queue.pop_front();
            self.answered = true;
        }
    }

    /// After queueing client messages: answers the proxy made that need no server reply
    /// before them go out now.
    pub fn flush_made(&mut self, to_client: &mut Vec<u8>) {
        self.emit_made(to_client);
    }
}

/// Whether a simple query drops all prepared statements (`DISCARD ALL`,
/// `DEALLOCATE ALL`).
fn discards_statements(query: &[u8]) -> bool {
    let text = String::from_utf8_lossy(query).to_ascii_lowercase();
    let words: Vec<&str> = text
        .trim_end_matches('\0')
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    matches!(
        words.as_slice(),
        ["discard", "all", ..] | ["deallocate", "all", ..] | ["deallocate", "prepare", "all", ..]
    )
}

/// Hash of a Parse body after its name: query text and parameter types.
fn statement_id(rest: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rest.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Message {
        Message {
            tag,
            body: Bytes::copy_from_slice(body),
        }
    }

    fn parse(name: &str, query: &str) -> Message {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(query.as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        msg(b'P', &b)
    }

    fn bind(stmt: &str) -> Message {
        let mut b = vec![0];
        b.extend_from_slice(stmt.as_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    /// Tags of the messages in a wire buffer.
    fn tags(buf: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = buf;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            out.push(rest[0]);
            rest = &rest[1 + len..];
        }
        out
    }

    /// Runs server answers through the exchange (ReadyForQuery says `I`) and returns the
    /// tags the client gets, in order.
    fn answer(ex: &mut Exchange, server: &mut ServerStatements, answers: &[u8]) -> Vec<u8> {
        let mut to_client = Vec::new();
        for &t in answers {
            let body: &[u8] = if t == b'Z' { b"I" } else { b"" };
            ex.server_message(t, body, server, &mut to_client);
        }
        tags(&to_client)
    }

    #[test]
    fn statements_are_renamed_shared_and_injected() {
        let (mut c1, mut c2) = (ClientStatements::default(), ClientStatements::default());
        let mut server = ServerStatements::default();

        // Client 1 prepares s1 and runs it: Parse goes out renamed.
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        for m in [
            parse("s1", "SELECT 1"),
            bind("s1"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ] {
            assert!(
                ex.client_message(&m, &mut c1, &mut server, &mut out)
                    .unwrap()
            );
        }
        assert_eq!(tags(&out), b"PBES");
        assert!(!String::from_utf8_lossy(&out).contains("s1"));
        assert_eq!(answer(&mut ex, &mut server, b"12DCZ"), b"12DCZ");
        assert!(ex.is_idle());

        // Client 2 prepares the same text as s1 on the same connection: answered by the proxy.
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        let mut to_client = Vec::new();
        for m in [
            parse("s1", "SELECT 1"),
            bind("s1"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ] {
            ex.client_message(&m, &mut c2, &mut server, &mut out)
                .unwrap();
        }
        ex.flush_made(&mut to_client);
        assert_eq!(tags(&to_client), b"1", "ParseComplete made at once");
        assert_eq!(tags(&out), b"BES", "no Parse on the wire (no 42P05)");
        assert_eq!(answer(&mut ex, &mut server, b"2DCZ"), b"2DCZ");

        // Client 1 binds s1 on a fresh connection: Parse injected, its answer swallowed.
        let mut fresh = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        for m in [bind("s1"), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")] {
            ex.client_message(&m, &mut c1, &mut fresh, &mut out)
                .unwrap();
        }
        assert_eq!(
            tags(&out),
            b"PBES",
            "no 26000: the statement is prepared first"
        );
        assert_eq!(answer(&mut ex, &mut fresh, b"12DCZ"), b"2DCZ");
    }

    #[test]
    fn close_is_answered_by_the_proxy_and_statement_stays_on_server() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        ex.client_message(&parse("s1", "SELECT 1"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&msg(b'C', b"Ss1\0"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&msg(b'S', b""), &mut c, &mut server, &mut out)
            .unwrap();
        assert_eq!(tags(&out), b"PS");
        assert_eq!(answer(&mut ex, &mut server, b"1Z"), b"13Z");
        assert!(c.by_name.is_empty());
        assert_eq!(server.prepared.len(), 1);
    }

    #[test]
    fn an_error_skips_to_sync_and_forgets_a_failed_parse() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        for m in [
            parse("bad", "SELEC"),
            bind("bad"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ] {
            ex.client_message(&m, &mut c, &mut server, &mut out)
                .unwrap();
        }
        assert_eq!(answer(&mut ex, &mut server, b"EZ"), b"EZ");
        assert!(
            server.prepared.is_empty(),
            "the failed statement is not on the server"
        );
        assert!(ex.is_idle());
    }

    #[test]
    fn made_answers_after_an_error_are_dropped() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        ex.client_message(&parse("a", "SELECT 1"), &mut c, &mut server, &mut out)
            .unwrap();
        // Same text again under another name: answered by the proxy, but after the error
        // the server would have skipped it, so no ParseComplete may reach the client.
        ex.client_message(&msg(b'E', b"\0\0\0\0\0"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&parse("b", "SELECT 1"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&msg(b'S', b""), &mut c, &mut server, &mut out)
            .unwrap();
        assert_eq!(answer(&mut ex, &mut server, b"1EZ"), b"1EZ");
    }

    #[test]
    fn simple_queries_transactions_and_copy_keep_the_connection() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        ex.client_message(&msg(b'Q', b"BEGIN\0"), &mut c, &mut server, &mut out)
            .unwrap();
        let mut sink = Vec::new();
        ex.server_message(b'C', b"", &mut server, &mut sink);
        ex.server_message(b'Z', b"T", &mut server, &mut sink);
        assert!(!ex.is_idle(), "inside a transaction");
        ex.client_message(
            &msg(b'Q', b"COPY t FROM STDIN\0"),
            &mut c,
            &mut server,
            &mut out,
        )
        .unwrap();
        ex.server_message(b'G', b"", &mut server, &mut sink);
        assert!(ex.is_waiting());
        ex.client_message(&msg(b'd', b"1\n"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&msg(b'c', b""), &mut c, &mut server, &mut out)
            .unwrap();
        ex.server_message(b'C', b"", &mut server, &mut sink);
        ex.server_message(b'Z', b"T", &mut server, &mut sink);
        ex.client_message(&msg(b'Q', b"COMMIT\0"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.server_message(b'C', b"", &mut server, &mut sink);
        ex.server_message(b'Z', b"I", &mut server, &mut sink);
        assert!(ex.is_idle());
        assert!(
            !ex.client_message(&msg(b'X', b""), &mut c, &mut server, &mut out)
                .unwrap()
        );
    }

    #[test]
    fn an_unsynced_extended_cycle_keeps_the_connection() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        ex.client_message(&parse("", "SELECT 1"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&msg(b'H', b""), &mut c, &mut server, &mut out)
            .unwrap();
        answer(&mut ex, &mut server, b"1");
        assert!(!ex.is_waiting());
        assert!(!ex.is_idle(), "no Sync yet: the server is mid-cycle");
        assert!(ex.is_mid_exchange());
    }

    #[test]
    fn discard_all_forgets_client_and_server_statements() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        ex.client_message(&parse("s", "SELECT 1"), &mut c, &mut server, &mut out)
            .unwrap();
        ex.client_message(&msg(b'S', b""), &mut c, &mut server, &mut out)
            .unwrap();
        answer(&mut ex, &mut server, b"1Z");
        ex.client_message(&msg(b'Q', b"discard ALL;\0"), &mut c, &mut server, &mut out)
            .unwrap();
        answer(&mut ex, &mut server, b"CZ");
        assert!(c.by_name.is_empty());
        assert!(server.prepared.is_empty());
    }

    #[test]
    fn reset_query_answers_are_swallowed() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        ex.expect_reset();
        let mut out = Vec::new();
        ex.client_message(&msg(b'Q', b"SELECT 1\0"), &mut c, &mut server, &mut out)
            .unwrap();
        assert_eq!(answer(&mut ex, &mut server, b"CSCZTDCZ"), b"TDCZ");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let mut c = ClientStatements::default();
        let mut server = ServerStatements::default();
        let mut ex = Exchange::default();
        let mut out = Vec::new();
        for m in [
            msg(b'P', b"noterm"),
            msg(b'B', b"\0noterm"),
            msg(b'D', b""),
            msg(b'C', b"S"),
            msg(b'B', b"\0\xff\0"),
        ] {
            assert!(
                ex.client_message(&m, &mut c, &mut server, &mut out)
                    .is_err(),
                "{m:?}"
            );
        }
    }
}
