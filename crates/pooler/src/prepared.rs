//! Named prepared statements in transaction mode (PgBouncer 1.21's
//! `max_prepared_statements`).
//!
//! A client's named statement lives on whichever server connection it happened to use,
//! but in transaction mode its next Bind may run on another. So the pooler keeps each
//! client's Parse messages, prepares them on servers under its own names (one name per
//! distinct query text and parameter types, shared by all clients), and rewrites Bind,
//! Describe and Close to those names:
//!
//! - Parse `s1`: remembered; sent as Parse `PGHERD_<hash>` unless that server already has
//!   it, in which case the client gets a ParseComplete of ours instead;
//! - Bind/Describe `s1`: if the server lacks the statement, our Parse goes first and its
//!   ParseComplete is swallowed; then the message, renamed;
//! - Close `s1`: forgotten; the client gets a CloseComplete of ours (the server keeps the
//!   statement for other clients).
//!
//! The server answers messages in order, so [`Responses`] keeps one expectation per
//! message sent (or answered by us) and decides, per server frame, whether the client
//! sees it. After an error in the extended protocol the server skips everything up to
//! Sync, and so do we. While nothing of ours is expected, plain messages (unnamed
//! statements, simple queries) are only counted, not listed: their answers pass
//! through untouched, frame by frame or in whole spans
//! ([`Responses::passes_everything`]).

use bytes::{Bytes, BytesMut};
use pgherd_protocol::backend::{CloseComplete, ParseComplete};
use pgherd_protocol::frontend::{Bind, Close, Describe, Parse, Target};
use pgherd_protocol::{Frame, Message, ProtocolError};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// One client statement as the pooler prepares it on servers.
#[derive(Debug, Clone)]
struct Statement {
    server_name: String,
    /// The client's Parse, renamed to `server_name`, ready to send.
    parse: Bytes,
}

/// The named statements one client has prepared.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Statement>,
}

/// What the next server answer belongs to.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// The answer to a client message of this type goes to the client.
    Forward {
        tag: u8,
        /// A statement we marked prepared that an error means is not.
        unprepare: Option<String>,
    },
    /// The answer (`tag`) to a message of ours: the client never asked for it.
    Swallow { tag: u8, unprepare: Option<String> },
    /// A frame the client gets from us, in its turn, without the server.
    Synthetic(Bytes),
    /// Everything up to this many ReadyForQuery answers plain messages that were sent
    /// while nothing was tracked: passed on as it comes.
    Passthrough { ready_for_queries: usize },
}

/// Expected answers, in order.
#[derive(Debug, Default)]
pub struct Responses {
    queue: VecDeque<Expect>,
    /// The server reported an error and discards messages until it reads a Sync that
    /// the client has not sent yet: what is sent meanwhile gets no answer.
    skipping: bool,
    /// Statements sent while skipping: the server never prepared them.
    unprepared: Vec<String>,
    /// Plain messages sent while the queue was empty, not listed in it: the
    /// ReadyForQuery answers they are owed (each ended with a Sync, Query or
    /// FunctionCall)...
    untracked_ready: usize,
    /// ...and the types of those sent after the last of those, still unanswered (a
    /// pipeline flushed without Sync).
    unsynced: VecDeque<u8>,
}

/// The frame that completes the answer to a client message of type `tag`.
fn completes(tag: u8, answer: u8) -> bool {
    match tag {
        b'P' => answer == b'1',
        b'B' => answer == b'2',
        b'D' => matches!(answer, b'T' | b'n'),
        b'E' => matches!(answer, b'C' | b'I' | b's'),
        b'C' => answer == b'3',
        // Sync, simple Query and FunctionCall end with ReadyForQuery.
        _ => answer == b'Z',
    }
}

/// Whether `rewrite` would pass this client message on unchanged, whatever statements
/// the client has: nothing in it names a statement of the client's (unnamed
/// statements, portals, Execute, Sync, Flush, simple queries, COPY data). Terminate is
/// not plain: the caller handles it.
pub fn is_plain(tag: u8, body: &[u8]) -> bool {
    // A statement or portal name is a C string; empty is one NUL byte.
    let unnamed = |name: &[u8]| name.first() == Some(&0);
    match tag {
        b'P' => unnamed(body),
        // Bind: portal name, then statement name.
        b'B' => body
            .iter()
            .position(|&b| b == 0)
            .is_some_and(|end| unnamed(&body[end + 1..])),
        // Describe, Close: 'S' or 'P', then the name; portals are never tracked.
        b'D' | b'C' => match body.first() {
            Some(b'P') => true,
            Some(b'S') => unnamed(&body[1..]),
            _ => false,
        },
        b'X' => false,
        _ => true,
    }
}

/// The answers a batch of plain messages owes, in the form [`Responses`] counts them
/// while nothing is tracked: ReadyForQuery answers, and the types of the messages
/// after the last Sync, Query or FunctionCall (usually none).
#[derive(Debug, Default)]
pub struct PlainAnswers {
    ready: usize,
    unsynced: Vec<u8>,
}

impl PlainAnswers {
    /// One more plain message, in order.
    pub fn note(&mut self, tag: u8) {
        if matches!(tag, b'H' | b'd' | b'c' | b'f') {
            // Flush and the COPY stream get no answer of their own.
        } else if ends_with_ready(tag) {
            self.ready += 1;
            self.unsynced.clear();
        } else {
            self.unsynced.push(tag);
        }
    }
}

impl Responses {
    /// A batch of plain messages ([`is_plain`]) went to the server as it was, while
    /// [`Responses::passes_everything`]: counted, as each would be on its own.
    pub fn note_plain_batch(&mut self, answers: &PlainAnswers) {
        debug_assert!(self.passes_everything(), "a plain batch while tracking");
        if answers.ready > 0 {
            self.untracked_ready += answers.ready;
            self.unsynced.clear();
        }
        self.unsynced.extend(answers.unsynced.iter().copied());
    }
}

/// Messages whose answer ends with ReadyForQuery: Sync, simple Query, FunctionCall.
fn ends_with_ready(tag: u8) -> bool {
    matches!(tag, b'S' | b'Q' | b'F')
}

/// Messages the server sends at any time, outside the answer to any one message.
fn asynchronous(tag: u8) -> bool {
    matches!(tag, b'N' | b'S' | b'A')
}

fn frame_bytes(message: &impl Message) -> Bytes {
    let mut b = BytesMut::new();
    message.encode(&mut b);
    b.freeze()
}

/// The server-side name for a statement: the same text and parameter types give the same
/// name, so clients share prepared statements on a server.
fn server_name(parse: &Parse) -> String {
    let mut h = DefaultHasher::new();
    parse.query.hash(&mut h);
    parse.param_types.hash(&mut h);
    format!("PGHERD_{:016x}", h.finish())
}

/// Whether `frame` is a Parse of a named statement (the only kind tracked).
pub fn is_named_parse(frame: &Frame) -> bool {
    frame.tag == b'P' && frame.body.first().is_some_and(|&b| b != 0)
}

impl ClientStatements {
    /// Remember a named Parse without sending it anywhere: the statement is prepared on
    /// the server that runs the client's first Bind or Describe of it. Used for a client
    /// that only prepares (Parse, then Sync) while it holds no server.
    pub fn remember_parse(&mut self, frame: &Frame) -> Result<(), ProtocolError> {
        self.remember(Parse::decode(&frame.body)?);
        Ok(())
    }

    fn remember(&mut self, parse: Parse) -> Statement {
        let name = server_name(&parse);
        let mut renamed = BytesMut::new();
        parse.encode_renamed(&name, &mut renamed);
        let statement = Statement {
            server_name: name,
            parse: renamed.freeze(),
        };
        self.by_name.insert(parse.statement, statement.clone());
        statement
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Rewrite one client frame for `server` (whose prepared statements are `prepared`),
/// appending what to send to `out` and what to expect to `responses`. `limit`: the most
/// statements to keep prepared per server connection (0: no limit).
pub fn rewrite(
    frame: &Frame,
    client: &mut ClientStatements,
    prepared: &mut HashSet<String>,
    limit: usize,
    out: &mut BytesMut,
    responses: &mut Responses,
) -> Result<(), ProtocolError> {
    match frame.tag {
        // The unnamed statement (the name is the body's first string, here empty)
        // needs no tracking: forward it without decoding (and copying) the query.
        b'P' if frame.body.first() == Some(&0) => forward(frame, out, responses),
        b'P' => {
            let parse = Parse::decode(&frame.body)?;
            if parse.statement.is_empty() {
                return forward(frame, out, responses);
            }
            let statement = client.remember(parse);
            let name = statement.server_name;
            let renamed = statement.parse;
            if prepared.contains(&name) {
                responses.push(Expect::Synthetic(frame_bytes(&ParseComplete)));
            } else {
                make_room(prepared, limit, &name, out, responses);
                out.extend_from_slice(&renamed);
                prepared.insert(name.clone());
                responses.push(Expect::Forward {
                    tag: b'P',
                    unprepare: Some(name),
                });
            }
            Ok(())
        }
        b'B' => {
            let statement = Bind::statement_name(&frame.body)?;
            let Some(s) = named(client, &statement) else {
                return forward(frame, out, responses);
            };
            ensure_prepared(&s, prepared, limit, out, responses);
            Bind::rename(&frame.body, &s.server_name, out)?;
            responses.push(Expect::Forward {
                tag: b'B',
                unprepare: None,
            });
            Ok(())
        }
        b'D' => {
            let describe = Describe::decode(&frame.body)?;
            let Target::Statement(statement) = &describe.target else {
                return forward(frame, out, responses);
            };
            let Some(s) = named(client, statement) else {
                return forward(frame, out, responses);
            };
            ensure_prepared(&s, prepared, limit, out, responses);
            describe.encode_renamed(&s.server_name, out);
            responses.push(Expect::Forward {
                tag: b'D',
                unprepare: None,
            });
            Ok(())
        }
        b'C' => {
            let close = Close::decode(&frame.body)?;
            match &close.target {
                Target::Statement(statement) if !statement.is_empty() => {
                    // PostgreSQL answers CloseComplete even for an unknown name.
                    client.by_name.remove(statement);
                    responses.push(Expect::Synthetic(frame_bytes(&CloseComplete)));
                    Ok(())
                }
                _ => forward(frame, out, responses),
            }
        }
        _ => forward(frame, out, responses),
    }
}

fn named(client: &ClientStatements, statement: &str) -> Option<Statement> {
    if statement.is_empty() {
        return None;
    }
    client.by_name.get(statement).cloned()
}

fn forward(
    frame: &Frame,
    out: &mut BytesMut,
    responses: &mut Responses,
) -> Result<(), ProtocolError> {
    frame.encode(out);
    // Flush and the COPY stream get no answer of their own.
    if !matches!(frame.tag, b'H' | b'd' | b'c' | b'f') {
        responses.forward_plain(frame.tag);
    }
    Ok(())
}

/// Send our Parse for `s` first if this server does not have it yet.
fn ensure_prepared(
    s: &Statement,
    prepared: &mut HashSet<String>,
    limit: usize,
    out: &mut BytesMut,
    responses: &mut Responses,
) {
    if prepared.contains(&s.server_name) {
        return;
    }
    make_room(prepared, limit, &s.server_name, out, responses);
    out.extend_from_slice(&s.parse);
    prepared.insert(s.server_name.clone());
    responses.push(Expect::Swallow {
        tag: b'1',
        unprepare: Some(s.server_name.clone()),
    });
}

/// At the limit, close one statement on the server (not `keep`) before preparing another.
fn make_room(
    prepared: &mut HashSet<String>,
    limit: usize,
    keep: &str,
    out: &mut BytesMut,
    responses: &mut Responses,
) {
    if limit == 0 || prepared.len() < limit {
        return;
    }
    let Some(victim) = prepared.iter().find(|n| n.as_str() != keep).cloned() else {
        return;
    };
    prepared.remove(&victim);
    Close {
        target: Target::Statement(victim),
    }
    .encode(out);
    responses.push(Expect::Swallow {
        tag: b'3',
        unprepare: None,
    });
}

impl Responses {
    /// A plain message goes to the server: listed if anything is tracked, else only
    /// counted.
    fn forward_plain(&mut self, tag: u8) {
        if !self.queue.is_empty() || self.skipping {
            self.push(Expect::Forward {
                tag,
                unprepare: None,
            });
            return;
        }
        if ends_with_ready(tag) {
            self.untracked_ready += 1;
            self.unsynced.clear();
        } else {
            self.unsynced.push_back(tag);
        }
    }

    /// Nothing is tracked: every server frame goes to the client as it is (after
    /// [`Responses::on_untracked_frame`]).
    pub fn passes_everything(&self) -> bool {
        self.queue.is_empty() && !self.skipping && self.unprepared.is_empty()
    }

    /// Account for a server frame while [`Responses::passes_everything`].
    pub fn on_untracked_frame(&mut self, tag: u8) {
        if asynchronous(tag) {
            return;
        }
        if self.untracked_ready > 0 {
            // An answer to a message before the last counted Sync.
            if tag == b'Z' {
                self.untracked_ready -= 1;
            }
            return;
        }
        let Some(&sent) = self.unsynced.front() else {
            return;
        };
        if tag == b'E' {
            // The server now skips to a Sync the client has not sent yet.
            self.unsynced.clear();
            self.skipping = true;
        } else if completes(sent, tag) {
            self.unsynced.pop_front();
        }
    }

    /// Before anything is listed: what was only counted goes first.
    fn list_untracked(&mut self) {
        if self.untracked_ready > 0 {
            self.queue.push_back(Expect::Passthrough {
                ready_for_queries: self.untracked_ready,
            });
            self.untracked_ready = 0;
        }
        for tag in self.unsynced.drain(..) {
            self.queue.push_back(Expect::Forward {
                tag,
                unprepare: None,
            });
        }
    }

    fn push(&mut self, e: Expect) {
        self.list_untracked();
        if self.skipping {
            match e {
                Expect::Forward { tag: b'S', .. } => self.skipping = false,
                Expect::Forward {
                    unprepare: Some(n), ..
                }
                | Expect::Swallow {
                    unprepare: Some(n), ..
                } => {
                    self.unprepared.push(n);
                    return;
                }
                _ => return,
            }
        }
        self.queue.push_back(e);
    }

    /// Nothing owed either way: safe to hand the server to another client.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && !self.skipping
            && self.untracked_ready == 0
            && self.unsynced.is_empty()
    }

    /// Frames of ours whose turn has come (before the next server answer).
    pub fn take_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(_)) = self.queue.front() {
            if let Some(Expect::Synthetic(frame)) = self.queue.pop_front() {
                out.extend_from_slice(&frame);
            }
        }
    }

    /// Account for one server frame: `true` if the client should get it. `prepared` is
    /// corrected when a statement we thought prepared failed.
    pub fn on_server_frame(&mut self, tag: u8, prepared: &mut HashSet<String>) -> bool {
        for n in self.unprepared.drain(..) {
            prepared.remove(&n);
        }
        if asynchronous(tag) {
            return true;
        }
        if self.queue.is_empty() && !self.skipping {
            self.on_untracked_frame(tag);
            return true;
        }
        let Some(front) = self.queue.front_mut() else {
            // Nothing expected (e.g. a FATAL error before closing): pass it on.
            return true;
        };
        if let Expect::Passthrough { ready_for_queries } = front {
            if tag == b'Z' {
                *ready_for_queries -= 1;
                if *ready_for_queries == 0 {
                    self.queue.pop_front();
                }
            }
            return true;
        }
        let front = front.clone();
        match front {
            Expect::Synthetic(_) => true,
            Expect::Passthrough { .. } => true,
            Expect::Swallow {
                tag: want,
                unprepare,
            } => {
                if tag == want {
                    self.queue.pop_front();
                    return false;
                }
                if tag == b'E' {
                    self.failed(unprepare, prepared);
                }
                true
            }
            Expect::Forward {
                tag: sent,
                unprepare,
            } => {
                if tag == b'E' && !matches!(sent, b'Q' | b'F' | b'S') {
                    self.failed(unprepare, prepared);
                } else if completes(sent, tag) {
                    self.queue.pop_front();
                }
                true
            }
        }
    }

    /// The message at the front failed: the server skips to the next Sync; so do we.
    fn failed(&mut self, unprepare: Option<String>, prepared: &mut HashSet<String>) {
        if let Some(name) = unprepare {
            prepared.remove(&name);
        }
        self.queue.pop_front();
        // Until the Sync, if the client sent it already; else until it does.
        self.skipping = true;
        while let Some(e) = self.queue.front() {
            if matches!(e, Expect::Forward { tag: b'S', .. }) {
                self.skipping = false;
                break;
            }
            if let Some(
                Expect::Forward {
                    unprepare: Some(n), ..
                }
                | Expect::Swallow {
                    unprepare: Some(n), ..
                },
            ) = self.queue.pop_front()
            {
                // Skipped by the server: never prepared.
                prepared.remove(&n);
            }
        }
    }
}

/// What a simple-protocol query does to prepared statements, as far as pooling in
/// transaction mode cares (its first statement only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlPrepare {
    /// `PREPARE …`: a statement on whichever server runs it, gone for the client's
    /// next transaction; refused with a clear error.
    Prepare,
    /// `DEALLOCATE ALL` or `DISCARD ALL`: also drops the statements the pooler
    /// prepared on that server.
    DropsAll,
    Other,
}

/// A query PostgreSQL itself answers with a clear error in place of a `PREPARE`: the
/// error, and the transaction state after it, are then exactly the server's.
pub const PREPARE_REFUSAL: &str = "DO $pgherd$ BEGIN RAISE EXCEPTION USING \
    ERRCODE = 'feature_not_supported', \
    MESSAGE = 'SQL PREPARE is not supported in transaction pooling mode', \
    HINT = 'Use the extended protocol''s named statements (the pooler keeps them \
    across transactions) or session pooling.'; END $pgherd$";

/// Classify a simple query by its first keywords (after whitespace and comments).
pub fn sql_prepare_kind(query: &[u8]) -> SqlPrepare {
    let mut words = keywords(query);
    let first = words.next();
    let second = words.next();
    let is = |w: Option<&[u8]>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()));
    if is(first, "PREPARE") {
        return SqlPrepare::Prepare;
    }
    let all = is(second, "ALL") || (is(second, "PREPARE") && is(words.next(), "ALL"));
    if (is(first, "DEALLOCATE") || is(first, "DISCARD")) && all {
        return SqlPrepare::DropsAll;
    }
    SqlPrepare::Other
}

/// Whether a session-mode client's message leaves state on its server that a new
/// server would not have: a named statement (extended-protocol Parse with a name), or
/// a simple query starting with PREPARE, SET (not SET LOCAL), LISTEN, DECLARE, LOAD or
/// CREATE TEMP[ORARY]. Such a session cannot move to another server unnoticed. (Only the
/// first statement of a simple query is looked at.)
pub fn leaves_session_state(tag: u8, body: &[u8]) -> bool {
    match tag {
        b'P' => body.first().is_some_and(|&b| b != 0),
        b'Q' => {
            let mut words = keywords(body.strip_suffix(b"\0").unwrap_or(body));
            let is =
                |w: Option<&[u8]>, k: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()));
            let first = words.next();
            let second = words.next();
            ["PREPARE", "LISTEN", "DECLARE", "LOAD"]
                .iter()
                .any(|k| is(first, k))
                || (is(first, "SET") && !is(second, "LOCAL"))
                || (is(first, "CREATE") && (is(second, "TEMP") || is(second, "TEMPORARY")))
        }
        _ => false,
    }
}

/// The leading words of `sql`, skipping whitespace, `--` and `/* */` comments; stops
/// at the first character that is neither.
fn keywords(sql: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        loop {
            let trimmed = rest.trim_ascii_start();
            if let Some(after) = trimmed.strip_prefix(b"--") {
                rest = after
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |i| &after[i..]);
            } else if let Some(after) = trimmed.strip_prefix(b"/*") {
                rest = after
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(&[][..], |i| &after[i + 2..]);
            } else {
                rest = trimmed;
                break;
            }
        }
        let len = rest
            .iter()
            .position(|b| !b.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        let (word, after) = rest.split_at(len);
        rest = after;
        Some(word)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn simple_queries_are_classified_by_their_first_keywords() {
        use super::{sql_prepare_kind as kind, SqlPrepare::*};
        assert_eq!(kind(b"PREPARE p AS SELECT 1"), Prepare);
        assert_eq!(
            kind(b"  -- comment\n /* block */ prepare p(int) AS SELECT $1"),
            Prepare
        );
        assert_eq!(kind(b"DEALLOCATE ALL"), DropsAll);
        assert_eq!(kind(b"deallocate prepare all;"), DropsAll);
        assert_eq!(kind(b"DISCARD ALL"), DropsAll);
        assert_eq!(kind(b"DEALLOCATE p"), Other);
        assert_eq!(kind(b"DISCARD PLANS"), Other);
        assert_eq!(kind(b"SELECT 'PREPARE'"), Other);
        assert_eq!(kind(b"EXECUTE p"), Other);
        assert_eq!(kind(b""), Other);
        assert_eq!(kind(b"/* unterminated"), Other);
    }

    use super::*;
    use pgherd_protocol::frontend::{Execute, Sync};

    fn frame(m: &impl Message) -> Frame {
        m.to_frame()
    }

    fn execute() -> Frame {
        frame(&Execute {
            portal: String::new(),
            max_rows: 0,
        })
    }

    fn parse(name: &str, sql: &str) -> Frame {
        frame(&Parse {
            statement: name.into(),
            query: Bytes::copy_from_slice(sql.as_bytes()),
            param_types: vec![],
        })
    }

    fn bind(statement: &str) -> Frame {
        let mut b = BytesMut::new();
        Bind {
            portal: String::new(),
            statement: statement.into(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }
        .encode(&mut b);
        let frames = pgherd_protocol::FrameDecoder::frontend();
        frames.decode(&mut b).expect("frame").expect("complete")
    }

    fn tags(bytes: &BytesMut) -> Vec<u8> {
        tags_with(bytes, pgherd_protocol::FrameDecoder::frontend())
    }

    /// Tags of frames the pooler writes to the client.
    fn answer_tags(bytes: &BytesMut) -> Vec<u8> {
        tags_with(bytes, pgherd_protocol::FrameDecoder::backend())
    }

    fn tags_with(bytes: &BytesMut, d: pgherd_protocol::FrameDecoder) -> Vec<u8> {
        let mut b = bytes.clone();
        let mut out = Vec::new();
        while let Ok(Some(f)) = d.decode(&mut b) {
            out.push(f.tag);
        }
        out
    }

    fn send(
        frames: &[Frame],
        client: &mut ClientStatements,
        prepared: &mut HashSet<String>,
        r: &mut Responses,
    ) -> BytesMut {
        let mut out = BytesMut::new();
        for f in frames {
            rewrite(f, client, prepared, 0, &mut out, r).expect("rewrite");
        }
        out
    }

    /// Feed server answers; returns the tags the client receives (ours included).
    fn answer(answers: &[u8], r: &mut Responses, prepared: &mut HashSet<String>) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut synth = BytesMut::new();
        r.take_synthetic(&mut synth);
        seen.extend(answer_tags(&synth));
        for &a in answers {
            if r.on_server_frame(a, prepared) {
                seen.push(a);
            }
            let mut synth = BytesMut::new();
            r.take_synthetic(&mut synth);
            seen.extend(answer_tags(&synth));
        }
        seen
    }

    #[test]
    fn a_statement_follows_its_client_to_another_server() {
        let mut client = ClientStatements::default();
        let (mut server_a, mut server_b) = (HashSet::new(), HashSet::new());
        let mut r = Responses::default();
        let out = send(
            &[parse("s1", "SELECT 1"), bind("s1"), execute(), frame(&Sync)],
            &mut client,
            &mut server_a,
            &mut r,
        );
        assert_eq!(tags(&out), b"PBES");
        assert_eq!(answer(b"12CZ", &mut r, &mut server_a), b"12CZ");
        assert!(r.is_empty());

        // Next transaction on another server: our Parse goes first, its answer is swallowed.
        let out = send(
            &[bind("s1"), execute(), frame(&Sync)],
            &mut client,
            &mut server_b,
            &mut r,
        );
        assert_eq!(tags(&out), b"PBES");
        assert_eq!(answer(b"12CZ", &mut r, &mut server_b), b"2CZ");
        assert!(r.is_empty());
    }

    #[test]
    fn parse_of_a_statement_the_server_has_is_answered_by_the_pooler() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut a = ClientStatements::default();
        send(
            &[parse("x", "SELECT 2"), frame(&Sync)],
            &mut a,
            &mut prepared,
            &mut r,
        );
        answer(b"1Z", &mut r, &mut prepared);
        // Another client prepares the same text under its own name.
        let mut b = ClientStatements::default();
        let out = send(
            &[parse("mine", "SELECT 2"), frame(&Sync)],
            &mut b,
            &mut prepared,
            &mut r,
        );
        assert_eq!(tags(&out), b"S", "the server already has it");
        assert_eq!(answer(b"Z", &mut r, &mut prepared), b"1Z");
    }

    #[test]
    fn close_is_answered_by_the_pooler_and_forgets_the_name() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        send(
            &[parse("s", "SELECT 3"), frame(&Sync)],
            &mut c,
            &mut prepared,
            &mut r,
        );
        answer(b"1Z", &mut r, &mut prepared);
        let close = frame(&Close {
            target: Target::Statement("s".into()),
        });
        let out = send(&[close, frame(&Sync)], &mut c, &mut prepared, &mut r);
        assert_eq!(tags(&out), b"S");
        assert_eq!(answer(b"Z", &mut r, &mut prepared), b"3Z");
        assert!(c.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_unmarks_a_failed_parse() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        let out = send(
            &[
                parse("bad", "SELEC 1"),
                bind("bad"),
                execute(),
                frame(&Sync),
            ],
            &mut c,
            &mut prepared,
            &mut r,
        );
        assert_eq!(tags(&out), b"PBES");
        // Parse fails; the server skips Bind and Execute and answers Sync.
        assert_eq!(answer(b"EZ", &mut r, &mut prepared), b"EZ");
        assert!(
            prepared.is_empty(),
            "a statement that failed to parse is not prepared"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn an_error_before_the_client_sent_its_sync_skips_what_follows() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        send(&[parse("bad", "SELEC 1")], &mut c, &mut prepared, &mut r);
        // The server fails the Parse before Describe and Sync arrive.
        assert_eq!(answer(b"E", &mut r, &mut prepared), b"E");
        let describe = frame(&Describe {
            target: Target::Statement("bad".into()),
        });
        let close = frame(&Close {
            target: Target::Statement("bad".into()),
        });
        send(
            &[describe, close, frame(&Sync)],
            &mut c,
            &mut prepared,
            &mut r,
        );
        // Skipped by the server: no answers, and none of ours (no CloseComplete).
        assert_eq!(answer(b"Z", &mut r, &mut prepared), b"Z");
        assert!(r.is_empty());
        assert!(prepared.is_empty());
    }

    #[test]
    fn at_the_limit_an_old_statement_is_closed_first() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        let mut out = BytesMut::new();
        for (i, sql) in ["SELECT 1", "SELECT 2", "SELECT 3"].iter().enumerate() {
            rewrite(
                &parse(&format!("s{i}"), sql),
                &mut c,
                &mut prepared,
                2,
                &mut out,
                &mut r,
            )
            .expect("rewrite");
        }
        rewrite(&frame(&Sync), &mut c, &mut prepared, 2, &mut out, &mut r).expect("sync");
        assert_eq!(prepared.len(), 2);
        assert_eq!(tags(&out), b"PPCPS");
        assert_eq!(answer(b"1131Z", &mut r, &mut prepared), b"111Z");
    }

    #[test]
    fn unnamed_statements_and_simple_queries_pass_through() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        let q = frame(&pgherd_protocol::frontend::Query::new("SELECT 1"));
        let out = send(
            &[parse("", "SELECT $1"), bind(""), frame(&Sync), q],
            &mut c,
            &mut prepared,
            &mut r,
        );
        assert_eq!(tags(&out), b"PBSQ");
        assert_eq!(answer(b"12ZTDCZ", &mut r, &mut prepared), b"12ZTDCZ");
        assert!(prepared.is_empty() && r.is_empty());
    }

    #[test]
    fn plain_messages_sent_untracked_are_answered_before_a_named_statement() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        // Counted, not listed: their answers pass through untouched.
        send(
            &[parse("", "SELECT 1"), bind(""), execute(), frame(&Sync)],
            &mut c,
            &mut prepared,
            &mut r,
        );
        assert!(r.passes_everything() && !r.is_empty());
        // Before those answers come, a named statement the server lacks: our Parse's
        // ParseComplete must be swallowed, not the unnamed one's.
        send(
            &[bind("s9"), execute(), frame(&Sync)],
            &mut c,
            &mut prepared,
            &mut r,
        );
        c.remember_parse(&parse("s9", "SELECT 9")).expect("parse");
        let out = send(
            &[bind("s9"), execute(), frame(&Sync)],
            &mut c,
            &mut prepared,
            &mut r,
        );
        assert_eq!(tags(&out), b"PBES");
        assert!(!r.passes_everything());
        // Untracked batch, then the unnamed Bind of an unknown name (forwarded, the
        // server fails it), then ours.
        assert_eq!(
            answer(b"12CZ" as &[u8], &mut r, &mut prepared),
            b"12CZ",
            "the untracked batch passes whole"
        );
        assert_eq!(answer(b"EZ", &mut r, &mut prepared), b"EZ");
        assert_eq!(answer(b"12CZ", &mut r, &mut prepared), b"2CZ");
        assert!(r.is_empty() && r.passes_everything());
    }

    #[test]
    fn an_error_in_an_unsynced_untracked_pipeline_skips_to_the_sync() {
        let mut prepared = HashSet::new();
        let mut r = Responses::default();
        let mut c = ClientStatements::default();
        let flush = frame(&pgherd_protocol::frontend::Flush);
        send(
            &[parse("", "SELEC 1"), flush],
            &mut c,
            &mut prepared,
            &mut r,
        );
        assert!(r.passes_everything());
        r.on_untracked_frame(b'E');
        // The server skips to the Sync: a named Parse sent meanwhile gets no answer.
        send(
            &[parse("s1", "SELECT 1"), frame(&Sync)],
            &mut c,
            &mut prepared,
            &mut r,
        );
        assert_eq!(answer(b"Z", &mut r, &mut prepared), b"Z");
        assert!(r.is_empty());
        assert!(prepared.is_empty(), "never prepared on the server");
    }

    #[test]
    fn session_state_is_what_a_new_server_would_not_have() {
        use super::leaves_session_state;
        let q = |sql: &str| leaves_session_state(b'Q', format!("{sql}\0").as_bytes());
        assert!(q("PREPARE s AS SELECT 1"));
        assert!(q("  /* note */ set search_path = app"));
        assert!(q("LISTEN jobs"));
        assert!(q("create temporary table t (a int)"));
        assert!(q("CREATE TEMP TABLE t (a int)"));
        assert!(q("DECLARE c CURSOR WITH HOLD FOR SELECT 1"));
        assert!(!q("SET LOCAL statement_timeout = 0"));
        assert!(!q("BEGIN"));
        assert!(!q("UPDATE t SET a = 1"));
        assert!(!q("CREATE TABLE t (a int)"));
        assert!(!q("SELECT 1"));
        // Extended protocol: a named statement stays on its server, the unnamed one not.
        assert!(leaves_session_state(b'P', b"s1\0SELECT 1\0\0\0"));
        assert!(!leaves_session_state(b'P', b"\0SELECT 1\0\0\0"));
        assert!(!leaves_session_state(b'B', b"s1\0"));
    }
}
