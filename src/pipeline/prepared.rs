//! Named protocol-level prepared statements under transaction pooling.
//!
//! A statement a client prepares with a named Parse lives only on the
//! server connection that parsed it, and the client's next transaction may
//! run on another. So the client's names never reach PostgreSQL: every
//! distinct statement (query text plus parameter types) gets a server-side
//! name derived from a keyed hash of it, `pgc_<16 hex digits>`, identical in
//! every worker, and a connection that lacks the statement when a Bind or
//! Describe needs it gets the Parse first. Connections share statements:
//! two clients preparing the same text use one server statement.
//!
//! Because some client requests are answered here (a Parse the connection
//! already has, a Close, an unknown name) and some requests are added (a
//! Parse before a Bind, closes of statements evicted from the connection),
//! the answers are matched to requests by [`Responses`]. Everything here is
//! pure bookkeeping on whole messages; the caller owns the sockets and the
//! per-connection record ([`ServerStatements`]).
//!
//! What a client can tell from a direct connection:
//! * a Close of a statement does not close portals already bound from it;
//! * a client that has more than `max_client_statements` names loses the
//!   least recently used one ("does not exist" on its next Bind);
//! * SQL-level `PREPARE` / `EXECUTE` are passed through untouched and so
//!   only work within one transaction; `DEALLOCATE name` of a name the
//!   client prepared with Parse is answered here, and `DEALLOCATE ALL` /
//!   `DISCARD ALL` forget every name, but only when sent alone as a simple
//!   query (no comments, no other statement in the same query string);
//! * the unnamed statement is not carried: a Bind to it must follow its
//!   Parse within one transaction, as with any transaction pooler.
//!
//! If the bookkeeping meets what it cannot explain it says so instead of
//! guessing: a malformed client message, a server answer no request
//! accounts for. Closing before every Parse (harmless when the statement
//! is absent) and forgetting a statement the server reports missing make
//! the per-connection record self-correcting in both directions.

use std::collections::HashMap;
use std::rc::{Rc, Weak};

use super::responses::{Fate, Request, ResponseError, Responses, Show, Skipping, Synthetic};
use crate::protocol::message::{put_cstr, put_cstr_bytes, write_message};
use crate::protocol::sqlstate;
use crate::protocol::tag::{frontend, transaction_status};

/// Every server-side statement name pgcorral creates starts with this.
pub const SERVER_NAME_PREFIX: &str = "pgc_";

/// A client may not have more requests than this waiting for answers; it
/// is refused rather than allowed to grow the queue without end (answers
/// pgcorral gives itself cost the server nothing, so the server's pace
/// does not bound them).
pub const MAX_OUTSTANDING: usize = 1 << 18;

/// Statements evicted from a connection's record are closed on the server
/// only once it is idle outside a transaction; a client that keeps
/// preparing new statements without getting there is refused beyond this
/// many.
pub const MAX_DEFERRED_CLOSES: usize = 1 << 16;

const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
const UNDEFINED_PREPARED_STATEMENT: &str = "26000";

/// The prepared statements the server connection currently attached has,
/// by server-side name. The caller backs it with the slot's record, which
/// outlives this worker's use of the connection.
pub trait ServerStatements {
    /// Also counts as a use for least-recently-used eviction.
    fn contains(&self, server_name: &str) -> bool;
    /// Records that the connection now has it; may return a name the
    /// caller evicted to make room (least recently used), which the
    /// rewriter closes on the server.
    fn insert(&mut self, server_name: &str) -> Option<String>;
    fn remove(&mut self, server_name: &str);
    fn clear(&mut self);
}

#[derive(Debug, thiserror::Error)]
pub enum PreparedError {
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("two different statements hash to the server-side name {name}")]
    HashCollision { name: String },
    #[error("more than {MAX_OUTSTANDING} requests waiting for answers")]
    TooManyOutstanding,
    #[error("more than {MAX_DEFERRED_CLOSES} prepared statements waiting to be closed; send Sync")]
    TooManyDeferredCloses,
    #[error(transparent)]
    Server(#[from] ResponseError),
}

impl PreparedError {
    /// The SQLSTATE to report to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PreparedError::Malformed { .. } => sqlstate::PROTOCOL_VIOLATION,
            PreparedError::HashCollision { .. } => sqlstate::INTERNAL_ERROR,
            PreparedError::TooManyOutstanding | PreparedError::TooManyDeferredCloses => {
                sqlstate::PROGRAM_LIMIT_EXCEEDED
            }
            PreparedError::Server(e) => e.sqlstate(),
        }
    }
}

/// One distinct statement, shared by every client name that maps to it.
#[derive(Debug)]
pub struct Statement {
    hash: u64,
    server_name: String,
    /// The Parse body after the statement name: query text with its NUL,
    /// parameter type count and type OIDs. This is what is hashed, so two
    /// Parses that differ only in the name are one statement.
    text: Box<[u8]>,
}

impl Statement {
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    fn write_parse(&self, out: &mut Vec<u8>) {
        write_message(out, frontend::PARSE, |b| {
            put_cstr(b, &self.server_name);
            b.extend_from_slice(&self.text);
        });
    }
}

/// The server-side name for a statement hash.
pub fn server_name(hash: u64) -> String {
    format!("{SERVER_NAME_PREFIX}{hash:016x}")
}

/// The hash back from a server-side name (for a record that stores only
/// hashes); `None` for names pgcorral does not make.
pub fn server_name_hash(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(SERVER_NAME_PREFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Hash of a statement's text (the Parse body after the name). SipHash-2-4
/// keyed with `key`: every worker must use the same key so that they agree
/// on names, and a key clients cannot learn keeps them from crafting a text
/// that takes over another statement's name.
pub fn statement_hash(key: [u64; 2], text: &[u8]) -> u64 {
    siphash24(key[0], key[1], text)
}

fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    fn compress(v: &mut [u64; 4], m: u64) {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    }
    let chunks = data.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        compress(&mut v, u64::from_le_bytes(w));
    }
    let mut last = (data.len() as u64) << 56;
    for (i, &b) in tail.iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    compress(&mut v, last);
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[derive(Debug, Clone)]
struct Named {
    statement: Rc<Statement>,
    used: u64,
}

/// The client's own statement names, at most `max` of them: beyond that
/// the least recently used name is forgotten (a later Bind to it gets
/// "does not exist"). Statement texts are held once however many names
/// share them.
#[derive(Debug)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Named>,
    /// Every statement still referenced, by hash, so a text is stored once.
    texts: HashMap<u64, Weak<Statement>>,
    clock: u64,
    max: usize,
}

impl ClientStatements {
    pub fn new(max: usize) -> Self {
        ClientStatements {
            by_name: HashMap::new(),
            texts: HashMap::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }

    /// The statement a client name maps to; counts as a use.
    pub fn lookup(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        self.clock += 1;
        let named = self.by_name.get_mut(name)?;
        named.used = self.clock;
        Some(named.statement.clone())
    }

    /// Maps a new name; returns the name forgotten to make room.
    fn insert(
        &mut self,
        name: &[u8],
        statement: Rc<Statement>,
    ) -> Option<(Box<[u8]>, Rc<Statement>)> {
        let mut evicted = None;
        if self.by_name.len() >= self.max && !self.by_name.contains_key(name) {
            let oldest = self
                .by_name
                .iter()
                .min_by_key(|(_, n)| n.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                evicted = self.by_name.remove(&k).map(|n| (k, n.statement));
            }
        }
        self.clock += 1;
        self.by_name.insert(
            name.into(),
            Named {
                statement,
                used: self.clock,
            },
        );
        evicted
    }

    fn remove(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        self.by_name.remove(name).map(|n| n.statement)
    }

    fn remove_if(&mut self, name: &[u8], statement: &Rc<Statement>) {
        if self
            .by_name
            .get(name)
            .is_some_and(|n| Rc::ptr_eq(&n.statement, statement))
        {
            self.by_name.remove(name);
        }
    }

    /// Puts back a name an undone request had removed, unless the name is
    /// taken again or there is no room (then it stays forgotten, as if
    /// evicted).
    fn restore(&mut self, name: Box<[u8]>, statement: Rc<Statement>) {
        if self.by_name.len() < self.max && !self.by_name.contains_key(&name) {
            self.clock += 1;
            self.by_name.insert(
                name,
                Named {
                    statement,
                    used: self.clock,
                },
            );
        }
    }

    fn take_all(&mut self) -> HashMap<Box<[u8]>, Named> {
        std::mem::take(&mut self.by_name)
    }

    /// The one shared statement for this text.
    fn intern(&mut self, key: [u64; 2], text: &[u8]) -> Result<Rc<Statement>, PreparedError> {
        let hash = statement_hash(key, text);
        if let Some(existing) = self.texts.get(&hash).and_then(Weak::upgrade) {
            if *existing.text != *text {
                return Err(PreparedError::HashCollision {
                    name: existing.server_name.clone(),
                });
            }
            return Ok(existing);
        }
        let statement = Rc::new(Statement {
            hash,
            server_name: server_name(hash),
            text: text.into(),
        });
        // Dead entries are swept only now and then; the bound keeps the
        // map proportional to the names (plus what the queue still holds).
        if self.texts.len() >= 2 * self.max + 64 {
            self.texts.retain(|_, w| w.strong_count() > 0);
        }
        self.texts.insert(hash, Rc::downgrade(&statement));
        Ok(statement)
    }
}

/// Bookkeeping done when a request was sent, to be undone if the server
/// turns out not to have carried it out.
#[derive(Debug)]
enum Note {
    /// A named client Parse, sent (`sent`) or answered here.
    ClientParse {
        name: Box<[u8]>,
        statement: Rc<Statement>,
        evicted: Option<(Box<[u8]>, Rc<Statement>)>,
        sent: bool,
    },
    /// A Parse added before the client's Bind or Describe.
    InjectedParse(Rc<Statement>),
    /// A Bind or Describe naming a server statement the record says the
    /// connection has.
    Uses(Rc<Statement>),
    /// A client name dropped by Close or SQL DEALLOCATE.
    Forgot {
        name: Box<[u8]>,
        statement: Rc<Statement>,
    },
    /// Every client name, dropped by DEALLOCATE ALL or DISCARD ALL.
    ForgotAll(HashMap<Box<[u8]>, Named>),
}

/// Undoes a note's bookkeeping for a request that failed or was skipped.
fn settle(names: &mut ClientStatements, server: &mut dyn ServerStatements, note: Note, fate: Fate) {
    if fate == Fate::Done {
        return;
    }
    match note {
        Note::ClientParse {
            name,
            statement,
            evicted,
            sent,
        } => {
            names.remove_if(&name, &statement);
            if let Some((old, s)) = evicted {
                names.restore(old, s);
            }
            if sent {
                server.remove(statement.server_name());
            }
        }
        Note::InjectedParse(statement) => server.remove(statement.server_name()),
        Note::Uses(statement) => {
            // The record was wrong (someone ran SQL DEALLOCATE on our name,
            // or a multi-statement DISCARD ALL went by): correct it, so the
            // client's retry prepares the statement again.
            if fate
                == (Fate::Failed {
                    sqlstate: *b"26000",
                })
            {
                server.remove(statement.server_name());
            }
        }
        Note::Forgot { name, statement } => names.restore(name, statement),
        Note::ForgotAll(old) => {
            for (name, named) in old {
                names.restore(name, named.statement);
            }
        }
    }
}

/// What the caller may do with a message before holding it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Read it whole and hand it to the rewriter.
    Whole,
    /// Forward it unchanged without the rewriter; it may be streamed.
    Stream,
    /// Discard it without the rewriter: the server would ignore it.
    Drop,
}

/// Rewrites one client's extended-protocol traffic to server-side statement
/// names and matches the server's answers back to the client's requests.
/// One per client, for the client's whole life, across connections.
#[derive(Debug)]
pub struct Rewriter {
    key: [u64; 2],
    names: ClientStatements,
    responses: Responses<Note>,
    /// Discarding client messages until Sync, as the server does after an
    /// error (ours or its own).
    skipping: bool,
    /// Extended-protocol messages were sent since the last Sync.
    extended_open: bool,
    /// Evicted from the record but still on the server, to be closed once
    /// the server is idle outside a transaction (see `close_deferred`).
    deferred_closes: Vec<String>,
}

impl Rewriter {
    /// `max_client_statements` bounds the client's names; `key` is the
    /// statement hash key, the same in every worker.
    pub fn new(max_client_statements: usize, key: [u64; 2]) -> Self {
        Rewriter {
            key,
            names: ClientStatements::new(max_client_statements),
            responses: Responses::new(),
            skipping: false,
            extended_open: false,
            deferred_closes: Vec::new(),
        }
    }

    pub fn statements(&self) -> &ClientStatements {
        &self.names
    }

    /// Everything sent was answered, nothing waits for a Sync, nothing is
    /// being skipped and no close is pending: together with a last
    /// ReadyForQuery status of `I`, the connection can be given back.
    pub fn is_idle(&self) -> bool {
        self.responses.is_empty()
            && !self.extended_open
            && !self.skipping
            && self.deferred_closes.is_empty()
    }

    /// Answers still owed to the client; a caller may stop reading from
    /// the client while this is large.
    pub fn backlog(&self) -> usize {
        self.responses.len()
    }

    /// Status byte of the last ReadyForQuery the server sent (`I` before
    /// any), including ones hidden from the client.
    pub fn transaction_status(&self) -> u8 {
        self.responses.status()
    }

    /// The server connection is gone (or thrown away) mid-conversation:
    /// forget what it owed. The client's names are kept.
    pub fn connection_lost(&mut self) {
        self.responses.clear();
        self.skipping = false;
        self.extended_open = false;
        self.deferred_closes.clear();
    }

    /// How to handle a client message with this tag, known from its header.
    pub fn client_route(&self, tag: u8) -> Route {
        if self.skipping && tag != frontend::SYNC {
            Route::Drop
        } else if tag == frontend::COPY_DATA {
            Route::Stream
        } else {
            Route::Whole
        }
    }

    /// How to handle a server message with this tag, known from its header.
    pub fn server_route(&self, tag: u8) -> Route {
        if self.responses.streams(tag) {
            Route::Stream
        } else {
            Route::Whole
        }
    }

    /// One whole client message (tag and body without the length word).
    /// Appends what to send the server to `to_server` and what pgcorral
    /// answers itself, in order, to `to_client`. On error nothing was
    /// changed or sent; the client is to get the error's SQLSTATE.
    pub fn client_message(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        if self.skipping && tag != frontend::SYNC {
            return Ok(());
        }
        if self.responses.len() >= MAX_OUTSTANDING {
            return Err(PreparedError::TooManyOutstanding);
        }
        match tag {
            frontend::PARSE | frontend::BIND | frontend::DESCRIBE | frontend::CLOSE => {
                // Each of these evicts at most one statement from the
                // record, so checking here keeps the bound exact.
                if self.deferred_closes.len() >= MAX_DEFERRED_CLOSES {
                    return Err(PreparedError::TooManyDeferredCloses);
                }
                match tag {
                    frontend::PARSE => self.parse(body, server, to_server, to_client)?,
                    frontend::BIND => self.bind(body, server, to_server, to_client)?,
                    frontend::DESCRIBE => self.describe(body, server, to_server, to_client)?,
                    _ => self.close(body, server, to_server, to_client)?,
                }
                self.extended_open = true;
            }
            frontend::EXECUTE => {
                self.responses.sent(Request::Execute, Show::Pass, None);
                put(to_server, tag, body);
                self.extended_open = true;
            }
            frontend::FLUSH => {
                put(to_server, tag, body);
                self.extended_open = true;
            }
            frontend::SYNC if self.responses.in_copy_in() => {
                // The server ignores it (see `Responses::in_copy_in`).
                put(to_server, tag, body);
            }
            frontend::SYNC => self.sync(body, to_server),
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.responses.copy_end();
                put(to_server, tag, body);
            }
            frontend::QUERY => self.query(body, server, to_server, to_client)?,
            frontend::FUNCTION_CALL => {
                self.responses.sent(Request::FunctionCall, Show::Pass, None);
                put(to_server, tag, body);
            }
            // COPY data, Terminate: no answer of their own.
            _ => put(to_server, tag, body),
        }
        Ok(())
    }

    /// One whole server message. Appends what the client sees to
    /// `to_client`: the message, nothing, and/or answers pgcorral owed.
    /// May append housekeeping for the server to `to_server`, to be sent
    /// after whatever the caller has already queued for it. An error means
    /// the connection is out of step and must be closed.
    pub fn server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let names = &mut self.names;
        let skipping = self
            .responses
            .server_message(tag, body, to_client, &mut |note, fate| {
                settle(names, server, note, fate)
            })?;
        if skipping == Skipping::UntilSync {
            self.skipping = true;
        }
        if !self.deferred_closes.is_empty()
            && self.responses.is_empty()
            && !self.extended_open
            && self.responses.status() == transaction_status::IDLE
        {
            self.close_deferred(to_server);
        }
        Ok(())
    }

    /// Closes the statements evicted from the record. Only now, with the
    /// server idle outside a transaction: until the transaction ends a
    /// portal bound from them may still be executed (JDBC fetches a named
    /// portal across Syncs), and closing a statement drops its portals;
    /// right after a client's Sync the server may also be in COPY FROM
    /// STDIN, which a Close would abort. Our own Sync ends them, so that
    /// not even an error could reach into the client's next pipeline.
    fn close_deferred(&mut self, to_server: &mut Vec<u8>) {
        for name in self.deferred_closes.drain(..) {
            put_describe_like(to_server, frontend::CLOSE, b'S', name.as_bytes());
            self.responses.sent(Request::Close, Show::HideAll, None);
        }
        put(to_server, frontend::SYNC, &[]);
        self.responses.sent(Request::Sync, Show::HideAll, None);
    }

    fn answer(
        &mut self,
        answer: Synthetic,
        note: Option<Note>,
        server: &mut dyn ServerStatements,
        to_client: &mut Vec<u8>,
    ) {
        let names = &mut self.names;
        self.responses
            .synthetic(answer, note, to_client, &mut |note, fate| {
                settle(names, server, note, fate)
            });
    }

    /// Answers with an error and skips to Sync, as PostgreSQL does.
    fn refuse(
        &mut self,
        code: &'static str,
        message: String,
        server: &mut dyn ServerStatements,
        to_client: &mut Vec<u8>,
    ) {
        self.answer(Synthetic::Error { code, message }, None, server, to_client);
        self.skipping = true;
    }

    fn refuse_missing(
        &mut self,
        name: &[u8],
        server: &mut dyn ServerStatements,
        to_client: &mut Vec<u8>,
    ) {
        let message = format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        );
        self.refuse(UNDEFINED_PREPARED_STATEMENT, message, server, to_client);
    }

    /// Whether the connection has the statement, reviving it if it only
    /// waits for its deferred close.
    fn on_server(&mut self, statement: &Statement, server: &mut dyn ServerStatements) -> bool {
        let name = statement.server_name();
        if server.contains(name) {
            return true;
        }
        let Some(i) = self.deferred_closes.iter().position(|n| n == name) else {
            return false;
        };
        self.deferred_closes.swap_remove(i);
        if let Some(evicted) = server.insert(name) {
            self.deferred_closes.push(evicted);
        }
        true
    }

    /// Sends the Parse for a statement the record says the connection
    /// lacks; the caller queues the Parse's own entry.
    fn send_parse(
        &mut self,
        statement: &Statement,
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
    ) {
        // Close first: the record can miss a statement the server does have
        // (a DISCARD ALL that failed, closes lost with a client that left
        // mid-pipeline, a client's SQL PREPARE of our name). Closing a
        // missing statement is no error; parsing an existing name is.
        put_describe_like(
            to_server,
            frontend::CLOSE,
            b'S',
            statement.server_name().as_bytes(),
        );
        self.responses.sent(Request::Close, Show::HideAnswer, None);
        statement.write_parse(to_server);
        if let Some(evicted) = server.insert(statement.server_name()) {
            self.deferred_closes.push(evicted);
        }
    }

    /// Makes sure the connection has the statement before a Bind or
    /// Describe uses it.
    fn ensure(
        &mut self,
        statement: &Rc<Statement>,
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
    ) {
        if !self.on_server(statement, server) {
            self.send_parse(statement, server, to_server);
            self.responses.sent(
                Request::Parse,
                Show::HideAnswer,
                Some(Note::InjectedParse(statement.clone())),
            );
        }
    }

    fn parse(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let (name, text) = split_parse(body)?;
        if name.is_empty() {
            self.responses.sent(Request::Parse, Show::Pass, None);
            put(to_server, frontend::PARSE, body);
            return Ok(());
        }
        if self.names.contains(name) {
            let message = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(name)
            );
            self.refuse(DUPLICATE_PREPARED_STATEMENT, message, server, to_client);
            return Ok(());
        }
        let statement = self.names.intern(self.key, text)?;
        let evicted = self.names.insert(name, statement.clone());
        let sent = !self.on_server(&statement, server);
        let note = Note::ClientParse {
            name: name.into(),
            statement: statement.clone(),
            evicted,
            sent,
        };
        if sent {
            self.send_parse(&statement, server, to_server);
            self.responses.sent(Request::Parse, Show::Pass, Some(note));
        } else {
            self.answer(Synthetic::ParseComplete, Some(note), server, to_client);
        }
        Ok(())
    }

    fn bind(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let BindParts {
            portal,
            statement: name,
            rest,
        } = split_bind(body)?;
        if name.is_empty() {
            self.responses.sent(Request::Bind, Show::Pass, None);
            put(to_server, frontend::BIND, body);
            return Ok(());
        }
        let Some(statement) = self.names.lookup(name) else {
            self.refuse_missing(name, server, to_client);
            return Ok(());
        };
        self.ensure(&statement, server, to_server);
        write_message(to_server, frontend::BIND, |b| {
            put_cstr_bytes(b, portal);
            put_cstr(b, statement.server_name());
            b.extend_from_slice(rest);
        });
        self.responses
            .sent(Request::Bind, Show::Pass, Some(Note::Uses(statement)));
        Ok(())
    }

    fn describe(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let (kind, name) = split_describe_like(body, "Describe")?;
        if kind == b'P' {
            self.responses
                .sent(Request::DescribePortal, Show::Pass, None);
            put(to_server, frontend::DESCRIBE, body);
            return Ok(());
        }
        if name.is_empty() {
            self.responses
                .sent(Request::DescribeStatement, Show::Pass, None);
            put(to_server, frontend::DESCRIBE, body);
            return Ok(());
        }
        let Some(statement) = self.names.lookup(name) else {
            self.refuse_missing(name, server, to_client);
            return Ok(());
        };
        self.ensure(&statement, server, to_server);
        put_describe_like(
            to_server,
            frontend::DESCRIBE,
            b'S',
            statement.server_name().as_bytes(),
        );
        self.responses.sent(
            Request::DescribeStatement,
            Show::Pass,
            Some(Note::Uses(statement)),
        );
        Ok(())
    }

    fn close(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let (kind, name) = split_describe_like(body, "Close")?;
        if kind == b'P' || name.is_empty() {
            self.responses.sent(Request::Close, Show::Pass, None);
            put(to_server, frontend::CLOSE, body);
            return Ok(());
        }
        // The server statement stays: other clients may use it, and the
        // record evicts it when room is needed. Closing an unknown name is
        // no error in PostgreSQL either.
        let note = self.names.remove(name).map(|statement| Note::Forgot {
            name: name.into(),
            statement,
        });
        self.answer(Synthetic::CloseComplete, note, server, to_client);
        Ok(())
    }

    fn sync(&mut self, body: &[u8], to_server: &mut Vec<u8>) {
        self.skipping = false;
        self.extended_open = false;
        self.responses.sent(Request::Sync, Show::Pass, None);
        put(to_server, frontend::SYNC, body);
    }

    fn query(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let nul = body
            .iter()
            .position(|&b| b == 0)
            .ok_or(PreparedError::Malformed { what: "Query" })?;
        match classify(&body[..nul]) {
            Sql::ForgetAll => {
                // The server drops every statement of the session, ours
                // included, and with them any close still pending.
                let old = self.names.take_all();
                server.clear();
                self.deferred_closes.clear();
                self.responses
                    .sent(Request::Query, Show::Pass, Some(Note::ForgotAll(old)));
                put(to_server, frontend::QUERY, body);
            }
            Sql::Deallocate(name) if self.names.contains(&name) => {
                // The server knows the statement by another name; answer as
                // it would have.
                let note = self.names.remove(&name).map(|statement| Note::Forgot {
                    name: name.into(),
                    statement,
                });
                self.answer(
                    Synthetic::Command { tag: "DEALLOCATE" },
                    note,
                    server,
                    to_client,
                );
            }
            Sql::Deallocate(_) | Sql::Other => {
                self.responses.sent(Request::Query, Show::Pass, None);
                put(to_server, frontend::QUERY, body);
            }
        }
        Ok(())
    }
}

fn put(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    write_message(out, tag, |b| b.extend_from_slice(body));
}

/// Describe and Close share a layout: a kind byte and a name.
fn put_describe_like(out: &mut Vec<u8>, tag: u8, kind: u8, name: &[u8]) {
    write_message(out, tag, |b| {
        b.push(kind);
        put_cstr_bytes(b, name);
    });
}

fn cstr<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], PreparedError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(PreparedError::Malformed { what })?;
    let s = &buf[..nul];
    *buf = &buf[nul + 1..];
    Ok(s)
}

/// Name, and the rest (query, parameter types), checked for shape since
/// the rest is hashed and stored.
fn split_parse(body: &[u8]) -> Result<(&[u8], &[u8]), PreparedError> {
    const WHAT: &str = "Parse";
    let mut rest = body;
    let name = cstr(&mut rest, WHAT)?;
    let text = rest;
    cstr(&mut rest, WHAT)?;
    let (count, oids) = rest
        .split_first_chunk::<2>()
        .ok_or(PreparedError::Malformed { what: WHAT })?;
    let count = i16::from_be_bytes(*count);
    if count < 0 || oids.len() != 4 * count as usize {
        return Err(PreparedError::Malformed { what: WHAT });
    }
    Ok((name, text))
}

/// A Bind's portal and statement name, and the rest (parameters,
/// formats), which is the server's to check.
struct BindParts<'a> {
    portal: &'a [u8],
    statement: &'a [u8],
    rest: &'a [u8],
}

fn split_bind(body: &[u8]) -> Result<BindParts<'_>, PreparedError> {
    let mut rest = body;
    let portal = cstr(&mut rest, "Bind")?;
    let statement = cstr(&mut rest, "Bind")?;
    Ok(BindParts {
        portal,
        statement,
        rest,
    })
}

fn split_describe_like<'a>(
    body: &'a [u8],
    what: &'static str,
) -> Result<(u8, &'a [u8]), PreparedError> {
    let (&kind, mut rest) = body
        .split_first()
        .ok_or(PreparedError::Malformed { what })?;
    if kind != b'S' && kind != b'P' {
        return Err(PreparedError::Malformed { what });
    }
    let name = cstr(&mut rest, what)?;
    if !rest.is_empty() {
        return Err(PreparedError::Malformed { what });
    }
    Ok((kind, name))
}

/// The simple queries that change protocol-level statements.
#[derive(Debug, PartialEq, Eq)]
enum Sql {
    /// `DEALLOCATE [PREPARE] ALL` or `DISCARD ALL`.
    ForgetAll,
    /// `DEALLOCATE [PREPARE] name`, with the name as PostgreSQL reads it.
    Deallocate(Vec<u8>),
    Other,
}

/// Recognises the statement alone, in any case, with surrounding
/// whitespace and trailing semicolons; anything else (comments, several
/// statements) is `Other`.
fn classify(sql: &[u8]) -> Sql {
    let mut s = trim_sql(sql);
    let Some((first, _)) = word(&mut s) else {
        return Sql::Other;
    };
    if first.eq_ignore_ascii_case(b"discard") {
        return match word(&mut s) {
            Some((w, false)) if w.eq_ignore_ascii_case(b"all") && s.is_empty() => Sql::ForgetAll,
            _ => Sql::Other,
        };
    }
    if !first.eq_ignore_ascii_case(b"deallocate") {
        return Sql::Other;
    }
    let Some((mut target, mut quoted)) = word(&mut s) else {
        return Sql::Other;
    };
    // PREPARE is optional noise, unless it is the statement's own name.
    if !quoted && target.eq_ignore_ascii_case(b"prepare") && !s.is_empty() {
        let Some(next) = word(&mut s) else {
            return Sql::Other;
        };
        (target, quoted) = next;
    }
    if !s.is_empty() {
        return Sql::Other;
    }
    if !quoted && target.eq_ignore_ascii_case(b"all") {
        return Sql::ForgetAll;
    }
    if quoted {
        Sql::Deallocate(target)
    } else {
        Sql::Deallocate(target.to_ascii_lowercase())
    }
}

fn is_sql_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn trim_sql(sql: &[u8]) -> &[u8] {
    let start = sql
        .iter()
        .position(|&b| !is_sql_space(b))
        .unwrap_or(sql.len());
    let end = sql
        .iter()
        .rposition(|&b| !is_sql_space(b) && b != b';')
        .map_or(start, |i| i + 1);
    &sql[start..end.max(start)]
}

/// The next keyword or identifier: a quoted identifier (with `""` for a
/// quote) comes back unquoted and flagged; an unquoted one as written.
fn word(s: &mut &[u8]) -> Option<(Vec<u8>, bool)> {
    let start = s.iter().position(|&b| !is_sql_space(b))?;
    let rest = &s[start..];
    if rest.first() == Some(&b'"') {
        let mut out = Vec::new();
        let mut i = 1;
        loop {
            match rest.get(i) {
                None => return None,
                Some(b'"') if rest.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                Some(b'"') => break,
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        *s = &rest[i + 1..];
        return (!out.is_empty()).then_some((out, true));
    }
    let first = *rest.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
        return None;
    }
    let len = rest
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80))
        .unwrap_or(rest.len());
    let w = rest[..len].to_vec();
    *s = &rest[len..];
    Some((w, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorResponse;
    use std::cell::RefCell;

    const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

    /// A connection's record, least recently used first.
    struct Conn {
        cap: usize,
        lru: RefCell<Vec<String>>,
    }

    impl Conn {
        fn new(cap: usize) -> Self {
            Conn {
                cap,
                lru: RefCell::new(Vec::new()),
            }
        }

        fn has(&self, name: &str) -> bool {
            self.lru.borrow().iter().any(|n| n == name)
        }

        fn names(&self) -> Vec<String> {
            self.lru.borrow().clone()
        }
    }

    impl ServerStatements for Conn {
        fn contains(&self, name: &str) -> bool {
            let mut lru = self.lru.borrow_mut();
            let Some(i) = lru.iter().position(|n| n == name) else {
                return false;
            };
            let n = lru.remove(i);
            lru.push(n);
            true
        }

        fn insert(&mut self, name: &str) -> Option<String> {
            if self.contains(name) {
                return None;
            }
            let lru = self.lru.get_mut();
            let evicted = (lru.len() >= self.cap).then(|| lru.remove(0));
            lru.push(name.to_owned());
            evicted
        }

        fn remove(&mut self, name: &str) {
            self.lru.get_mut().retain(|n| n != name);
        }

        fn clear(&mut self) {
            self.lru.get_mut().clear();
        }
    }

    type Msg = (char, Vec<u8>);

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Splits a byte stream into messages, so that a mismatch shows which.
    fn frames(mut bytes: &[u8]) -> Vec<Msg> {
        let mut v = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 5, "cut header: {bytes:?}");
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            assert!(len >= 4 && bytes.len() > len, "cut message: {bytes:?}");
            v.push((bytes[0] as char, bytes[5..1 + len].to_vec()));
            bytes = &bytes[1 + len..];
        }
        v
    }

    fn all(msgs: &[Vec<u8>]) -> Vec<Msg> {
        frames(&msgs.concat())
    }

    fn z(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// Query text and parameter types as they follow the name in a Parse.
    fn text(sql: &str, oids: &[u32]) -> Vec<u8> {
        let mut b = z(sql);
        b.extend_from_slice(&(oids.len() as i16).to_be_bytes());
        for o in oids {
            b.extend_from_slice(&o.to_be_bytes());
        }
        b
    }

    fn sn(sql: &str, oids: &[u32]) -> String {
        server_name(statement_hash(KEY, &text(sql, oids)))
    }

    // Client messages.
    fn parse(name: &str, sql: &str, oids: &[u32]) -> Vec<u8> {
        frame(b'P', &[z(name), text(sql, oids)].concat())
    }
    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        // No parameter formats, one text parameter "42", no result formats.
        let tail = [0, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0];
        frame(b'B', &[z(portal), z(stmt), tail.to_vec()].concat())
    }
    fn describe(kind: u8, name: &str) -> Vec<u8> {
        frame(b'D', &[vec![kind], z(name)].concat())
    }
    fn close(kind: u8, name: &str) -> Vec<u8> {
        frame(b'C', &[vec![kind], z(name)].concat())
    }
    fn execute(portal: &str) -> Vec<u8> {
        frame(b'E', &[z(portal), vec![0, 0, 0, 0]].concat())
    }
    fn sync() -> Vec<u8> {
        frame(b'S', &[])
    }
    fn flush() -> Vec<u8> {
        frame(b'H', &[])
    }
    fn query(sql: &str) -> Vec<u8> {
        frame(b'Q', &z(sql))
    }
    fn copy_data(data: &[u8]) -> Vec<u8> {
        frame(b'd', data)
    }
    fn copy_done() -> Vec<u8> {
        frame(b'c', &[])
    }

    // Server messages.
    fn parse_complete() -> Vec<u8> {
        frame(b'1', &[])
    }
    fn bind_complete() -> Vec<u8> {
        frame(b'2', &[])
    }
    fn close_complete() -> Vec<u8> {
        frame(b'3', &[])
    }
    fn parameters() -> Vec<u8> {
        frame(b't', &[0, 1, 0, 0, 0, 23])
    }
    fn row_description() -> Vec<u8> {
        frame(b'T', &[0, 0])
    }
    fn no_data() -> Vec<u8> {
        frame(b'n', &[])
    }
    fn data_row() -> Vec<u8> {
        frame(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
    }
    fn complete(tag: &str) -> Vec<u8> {
        frame(b'C', &z(tag))
    }
    fn ready(status: u8) -> Vec<u8> {
        frame(b'Z', &[status])
    }
    fn error(code: &str, message: &str) -> Vec<u8> {
        let mut v = Vec::new();
        ErrorResponse::error(code, message).encode(&mut v);
        v
    }
    fn notice() -> Vec<u8> {
        frame(b'N', b"SNOTICE\0C00000\0Mhello\0\0")
    }
    fn missing(name: &str) -> Vec<u8> {
        error(
            "26000",
            &format!("prepared statement \"{name}\" does not exist"),
        )
    }

    struct Client {
        rw: Rewriter,
    }

    impl Client {
        fn new() -> Self {
            Client {
                rw: Rewriter::new(1000, KEY),
            }
        }

        /// Feeds whole client messages: (to the server, to the client).
        fn send(&mut self, conn: &mut Conn, msgs: &[Vec<u8>]) -> (Vec<Msg>, Vec<Msg>) {
            let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
            for (tag, body) in frames(&msgs.concat()) {
                self.rw
                    .client_message(tag as u8, &body, conn, &mut to_server, &mut to_client)
                    .unwrap();
            }
            (frames(&to_server), frames(&to_client))
        }

        /// Feeds whole server messages: (to the server, to the client).
        fn recv(&mut self, conn: &mut Conn, msgs: &[Vec<u8>]) -> (Vec<Msg>, Vec<Msg>) {
            let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
            for (tag, body) in frames(&msgs.concat()) {
                self.rw
                    .server_message(tag as u8, &body, conn, &mut to_server, &mut to_client)
                    .unwrap();
            }
            (frames(&to_server), frames(&to_client))
        }

        /// Prepares a statement and lets the server answer.
        fn prepare(&mut self, conn: &mut Conn, name: &str, sql: &str) {
            let (to_server, _) = self.send(conn, &[parse(name, sql, &[]), sync()]);
            let answers: Vec<Vec<u8>> = to_server
                .iter()
                .map(|(tag, _)| match tag {
                    'C' => close_complete(),
                    'P' => parse_complete(),
                    _ => ready(b'I'),
                })
                .collect();
            self.recv(conn, &answers);
            assert!(self.rw.is_idle());
        }
    }

    #[test]
    fn named_statement_on_a_fresh_connection() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        let q = sn("select $1", &[23]);
        assert!(q.starts_with("pgc_") && q.len() == 20, "{q}");
        let (to_server, to_client) = c.send(
            &mut conn,
            &[
                parse("s1", "select $1", &[23]),
                bind("", "s1"),
                execute(""),
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q),
                parse(&q, "select $1", &[23]),
                bind("", &q),
                execute(""),
                sync()
            ])
        );
        assert!(to_client.is_empty());
        assert!(!c.rw.is_idle());
        let (extra, seen) = c.recv(
            &mut conn,
            &[
                close_complete(),
                parse_complete(),
                bind_complete(),
                data_row(),
                complete("SELECT 1"),
                ready(b'I'),
            ],
        );
        assert!(extra.is_empty());
        assert_eq!(
            seen,
            all(&[
                parse_complete(),
                bind_complete(),
                data_row(),
                complete("SELECT 1"),
                ready(b'I')
            ])
        );
        assert!(c.rw.is_idle());
        assert_eq!(conn.names(), [q]);
    }

    #[test]
    fn statement_is_prepared_again_on_a_connection_that_lacks_it() {
        let (mut one, mut two) = (Conn::new(8), Conn::new(8));
        let mut c = Client::new();
        let q = sn("select $1", &[23]);
        c.send(&mut one, &[parse("s1", "select $1", &[23]), sync()]);
        let (_, seen) = c.recv(&mut one, &[close_complete(), parse_complete(), ready(b'I')]);
        assert_eq!(seen, all(&[parse_complete(), ready(b'I')]));

        // The next transaction lands on another connection.
        let (to_server, to_client) = c.send(&mut two, &[bind("", "s1"), execute(""), sync()]);
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q),
                parse(&q, "select $1", &[23]),
                bind("", &q),
                execute(""),
                sync()
            ])
        );
        assert!(to_client.is_empty());
        let (_, seen) = c.recv(
            &mut two,
            &[
                close_complete(),
                parse_complete(),
                bind_complete(),
                data_row(),
                complete("SELECT 1"),
                ready(b'I'),
            ],
        );
        assert_eq!(
            seen,
            all(&[
                bind_complete(),
                data_row(),
                complete("SELECT 1"),
                ready(b'I')
            ]),
            "the client sees no answer to a Parse it did not send"
        );
        assert!(c.rw.is_idle() && two.has(&q));

        // Back on the first one, which has it: nothing is added.
        let (to_server, _) = c.send(&mut one, &[bind("", "s1"), execute(""), sync()]);
        assert_eq!(to_server, all(&[bind("", &q), execute(""), sync()]));
    }

    #[test]
    fn parse_of_a_statement_the_connection_has_is_answered_in_order() {
        let mut conn = Conn::new(8);
        Client::new().prepare(&mut conn, "x", "select 1");
        let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));

        let mut c = Client::new();
        let (to_server, to_client) = c.send(
            &mut conn,
            &[
                parse("a", "select 2", &[]),
                bind("", "a"),
                parse("b", "select 1", &[]),
                bind("", "b"),
                execute(""),
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q2),
                parse(&q2, "select 2", &[]),
                bind("", &q2),
                bind("", &q1),
                execute(""),
                sync()
            ])
        );
        assert!(
            to_client.is_empty(),
            "b's ParseComplete waits for a's answers"
        );
        let (_, seen) = c.recv(&mut conn, &[close_complete(), parse_complete()]);
        assert_eq!(seen, all(&[parse_complete()]));
        let (_, seen) = c.recv(&mut conn, &[bind_complete()]);
        assert_eq!(seen, all(&[bind_complete(), parse_complete()]));
        let (_, seen) = c.recv(
            &mut conn,
            &[
                bind_complete(),
                data_row(),
                complete("SELECT 1"),
                ready(b'I'),
            ],
        );
        assert_eq!(
            seen,
            all(&[
                bind_complete(),
                data_row(),
                complete("SELECT 1"),
                ready(b'I')
            ])
        );

        // With nothing outstanding the answer is immediate.
        let (to_server, to_client) = c.send(&mut conn, &[parse("c", "select 1", &[])]);
        assert!(to_server.is_empty());
        assert_eq!(to_client, all(&[parse_complete()]));
    }

    #[test]
    fn bind_of_an_unknown_name_fails_and_skips_to_sync() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        let (to_server, to_client) = c.send(
            &mut conn,
            &[
                bind("", "nope"),
                execute(""),
                parse("later", "select 1", &[]),
            ],
        );
        assert!(to_server.is_empty());
        assert_eq!(to_client, all(&[missing("nope")]));
        assert_eq!(c.rw.client_route(b'E'), Route::Drop);
        assert_eq!(c.rw.client_route(b'S'), Route::Whole);
        assert!(!c.rw.is_idle());

        let (to_server, to_client) = c.send(&mut conn, &[sync()]);
        assert_eq!(to_server, all(&[sync()]));
        assert!(to_client.is_empty());
        let (_, seen) = c.recv(&mut conn, &[ready(b'I')]);
        assert_eq!(seen, all(&[ready(b'I')]));
        assert!(
            !c.rw.statements().contains(b"later"),
            "skipped, as PostgreSQL would"
        );
        assert!(c.rw.is_idle());
        assert!(conn.names().is_empty());
    }

    #[test]
    fn server_error_drops_answers_owed_up_to_sync() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "k", "select 1");
        let (q1, bad) = (sn("select 1", &[]), sn("selec oops", &[]));
        let (to_server, to_client) = c.send(
            &mut conn,
            &[
                parse("a", "selec oops", &[]),
                parse("b", "select 1", &[]), // the connection has it: answered here
                close(b'S', "k"),            // answered here
                sync(),
                close(b'S', "b"), // after the Sync: stands
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &bad),
                parse(&bad, "selec oops", &[]),
                sync(),
                sync()
            ])
        );
        assert!(to_client.is_empty());
        assert!(!c.rw.statements().contains(b"k"));

        let syntax = error("42601", "syntax error at or near \"selec\"");
        let (_, seen) = c.recv(&mut conn, &[close_complete(), syntax.clone()]);
        assert_eq!(
            seen,
            all(&[syntax]),
            "b's ParseComplete and k's CloseComplete are dropped"
        );
        let (_, seen) = c.recv(&mut conn, &[ready(b'I'), ready(b'I')]);
        assert_eq!(seen, all(&[ready(b'I'), close_complete(), ready(b'I')]));

        // PostgreSQL carried out nothing between the error and the Sync.
        assert!(
            c.rw.statements().contains(b"k"),
            "the skipped Close is undone"
        );
        assert!(
            !c.rw.statements().contains(b"a"),
            "the failed Parse is undone"
        );
        assert!(!c.rw.statements().contains(b"b"));
        assert!(!conn.has(&bad) && conn.has(&q1), "{:?}", conn.names());
        assert!(c.rw.is_idle());

        // The name is free again, so a corrected Parse goes through.
        let (to_server, to_client) = c.send(&mut conn, &[parse("a", "select 2", &[])]);
        assert_eq!(to_server.len(), 2, "Close and Parse: {to_server:?}");
        assert!(to_client.is_empty());
    }

    #[test]
    fn server_error_before_the_sync_arrived_skips_what_follows() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "s", "select 1/0");
        let q = sn("select 1/0", &[]);
        let (to_server, _) = c.send(&mut conn, &[bind("", "s"), execute(""), flush()]);
        assert_eq!(to_server, all(&[bind("", &q), execute(""), flush()]));
        let div = error("22012", "division by zero");
        let (_, seen) = c.recv(&mut conn, &[bind_complete(), div.clone()]);
        assert_eq!(seen, all(&[bind_complete(), div]));
        // The server now discards everything up to a Sync; so do we.
        assert_eq!(c.rw.client_route(b'B'), Route::Drop);
        let (to_server, to_client) = c.send(&mut conn, &[bind("", "s"), execute(""), sync()]);
        assert_eq!(to_server, all(&[sync()]));
        assert!(to_client.is_empty());
        let (_, seen) = c.recv(&mut conn, &[ready(b'I')]);
        assert_eq!(seen, all(&[ready(b'I')]));
        assert!(c.rw.is_idle());
    }

    #[test]
    fn names_are_per_client_and_server_names_per_text() {
        let mut conn = Conn::new(8);
        let (mut a, mut b) = (Client::new(), Client::new());
        let (one, two) = (sn("select 1", &[]), sn("select 2", &[]));
        assert_ne!(one, two);
        assert_ne!(
            sn("select $1", &[23]),
            sn("select $1", &[25]),
            "types count"
        );

        let (to_server, _) = a.send(&mut conn, &[parse("s", "select 1", &[])]);
        assert_eq!(
            to_server,
            all(&[close(b'S', &one), parse(&one, "select 1", &[])])
        );
        a.recv(&mut conn, &[close_complete(), parse_complete()]);
        let (to_server, _) = b.send(&mut conn, &[parse("s", "select 2", &[])]);
        assert_eq!(
            to_server,
            all(&[close(b'S', &two), parse(&two, "select 2", &[])])
        );
        b.recv(&mut conn, &[close_complete(), parse_complete()]);
        // b's other name for a's text shares a's server statement.
        let (to_server, to_client) = b.send(&mut conn, &[parse("t", "select 1", &[])]);
        assert!(to_server.is_empty());
        assert_eq!(to_client, all(&[parse_complete()]));

        let (to_server, _) = a.send(&mut conn, &[bind("", "s"), execute(""), sync()]);
        assert_eq!(to_server, all(&[bind("", &one), execute(""), sync()]));
        let (to_server, _) = b.send(&mut conn, &[bind("", "s"), bind("p", "t"), sync()]);
        assert_eq!(to_server, all(&[bind("", &two), bind("p", &one), sync()]));
        // Another worker, with the same key, agrees.
        let mut other = Client::new();
        let (to_server, _) = other.send(&mut Conn::new(8), &[parse("zz", "select 2", &[])]);
        assert_eq!(
            to_server[1],
            (('P'), [z(&two), text("select 2", &[])].concat())
        );
    }

    #[test]
    fn deallocate_all_and_discard_all_forget_every_statement() {
        for sql in [
            "DEALLOCATE ALL",
            "deallocate prepare all;",
            "  Discard\tALL ; ",
            "discard all",
        ] {
            let mut conn = Conn::new(8);
            let mut c = Client::new();
            c.prepare(&mut conn, "s1", "select 1");
            let (to_server, to_client) = c.send(&mut conn, &[query(sql)]);
            assert_eq!(to_server, all(&[query(sql)]), "{sql}");
            assert!(to_client.is_empty());
            assert!(c.rw.statements().is_empty(), "{sql}");
            assert!(conn.names().is_empty(), "the server drops ours too: {sql}");
            let (_, seen) = c.recv(&mut conn, &[complete("DISCARD ALL"), ready(b'I')]);
            assert_eq!(seen, all(&[complete("DISCARD ALL"), ready(b'I')]));
            let (to_server, to_client) = c.send(&mut conn, &[bind("", "s1"), sync()]);
            assert_eq!(to_server, all(&[sync()]), "{sql}");
            assert_eq!(to_client, all(&[missing("s1")]));
        }
    }

    #[test]
    fn failed_discard_all_keeps_the_names() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "s1", "select 1");
        let q = sn("select 1", &[]);
        c.send(&mut conn, &[query("BEGIN")]);
        c.recv(&mut conn, &[complete("BEGIN"), ready(b'T')]);
        c.send(&mut conn, &[query("DISCARD ALL")]);
        let refused = error("25001", "DISCARD ALL cannot run inside a transaction block");
        let (_, seen) = c.recv(&mut conn, &[refused.clone(), ready(b'E')]);
        assert_eq!(seen, all(&[refused, ready(b'E')]));
        assert!(c.rw.statements().contains(b"s1"));
        // The record was cleared when it was sent; the Close ahead of the
        // Parse makes re-preparing safe although the server still has it.
        let (to_server, _) = c.send(&mut conn, &[bind("", "s1"), sync()]);
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q),
                parse(&q, "select 1", &[]),
                bind("", &q),
                sync()
            ])
        );
    }

    #[test]
    fn deallocate_of_a_name_is_answered_here() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "S_1", "select 1");
        let (to_server, to_client) = c.send(&mut conn, &[query("DEALLOCATE \"S_1\"")]);
        assert!(to_server.is_empty());
        assert_eq!(to_client, all(&[complete("DEALLOCATE"), ready(b'I')]));
        assert!(c.rw.statements().is_empty());
        assert!(conn.has(&sn("select 1", &[])), "other clients may use it");
        // Unquoted names fold to lower case, as in PostgreSQL.
        c.prepare(&mut conn, "s_2", "select 2");
        let (to_server, to_client) = c.send(&mut conn, &[query("deallocate prepare S_2;")]);
        assert!(to_server.is_empty());
        assert_eq!(to_client, all(&[complete("DEALLOCATE"), ready(b'I')]));
        // Names the client never prepared here are the server's business.
        let (to_server, _) = c.send(&mut conn, &[query("DEALLOCATE other")]);
        assert_eq!(to_server, all(&[query("DEALLOCATE other")]));
    }

    #[test]
    fn evicted_statements_are_closed_when_the_transaction_is_over() {
        let mut conn = Conn::new(2);
        let mut c = Client::new();
        let (q1, q2, q3) = (
            sn("select 1", &[]),
            sn("select 2", &[]),
            sn("select 3", &[]),
        );
        let (to_server, to_client) = c.send(
            &mut conn,
            &[
                parse("a", "select 1", &[]),
                parse("b", "select 2", &[]),
                bind("", "a"),
                parse("c", "select 3", &[]), // full: b is the least recently used
                execute(""),
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q1),
                parse(&q1, "select 1", &[]),
                close(b'S', &q2),
                parse(&q2, "select 2", &[]),
                bind("", &q1),
                close(b'S', &q3),
                parse(&q3, "select 3", &[]),
                execute(""),
                sync(),
            ])
        );
        assert!(to_client.is_empty());
        assert_eq!(conn.names(), [q1.clone(), q3.clone()]);
        let (housekeeping, seen) = c.recv(
            &mut conn,
            &[
                close_complete(),
                parse_complete(),
                close_complete(),
                parse_complete(),
                bind_complete(),
                close_complete(),
                parse_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ],
        );
        assert_eq!(
            seen,
            all(&[
                parse_complete(),
                parse_complete(),
                bind_complete(),
                parse_complete(),
                complete("SELECT 1"),
                ready(b'I')
            ])
        );
        assert_eq!(housekeeping, all(&[close(b'S', &q2), sync()]));
        assert!(!c.rw.is_idle(), "the close is unanswered");
        let (more, seen) = c.recv(&mut conn, &[close_complete(), ready(b'I')]);
        assert!(
            more.is_empty() && seen.is_empty(),
            "housekeeping is invisible"
        );
        assert!(c.rw.is_idle());

        // b is still the client's: on this connection it is prepared again.
        let (to_server, _) = c.send(&mut conn, &[bind("", "b"), sync()]);
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q2),
                parse(&q2, "select 2", &[]),
                bind("", &q2),
                sync()
            ])
        );
    }

    #[test]
    fn eviction_inside_a_transaction_waits_for_its_end() {
        let mut conn = Conn::new(1);
        let mut c = Client::new();
        let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));
        c.send(&mut conn, &[query("BEGIN")]);
        c.recv(&mut conn, &[complete("BEGIN"), ready(b'T')]);
        // A named portal from a, then b evicts a from the record.
        let (to_server, _) = c.send(
            &mut conn,
            &[
                parse("a", "select 1", &[]),
                bind("cur", "a"),
                parse("b", "select 2", &[]),
                execute("cur"),
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q1),
                parse(&q1, "select 1", &[]),
                bind("cur", &q1),
                close(b'S', &q2),
                parse(&q2, "select 2", &[]),
                execute("cur"),
                sync()
            ])
        );
        let (housekeeping, _) = c.recv(
            &mut conn,
            &[
                close_complete(),
                parse_complete(),
                bind_complete(),
                close_complete(),
                parse_complete(),
                frame(b's', &[]),
                ready(b'T'),
            ],
        );
        assert!(housekeeping.is_empty(), "the portal may be fetched again");
        assert!(!c.rw.is_idle());
        let (to_server, _) = c.send(&mut conn, &[execute("cur"), sync()]);
        assert_eq!(to_server, all(&[execute("cur"), sync()]));
        let (housekeeping, _) = c.recv(&mut conn, &[complete("SELECT 1"), ready(b'T')]);
        assert!(housekeeping.is_empty());
        c.send(&mut conn, &[query("COMMIT")]);
        let (housekeeping, seen) = c.recv(&mut conn, &[complete("COMMIT"), ready(b'I')]);
        assert_eq!(seen, all(&[complete("COMMIT"), ready(b'I')]));
        assert_eq!(housekeeping, all(&[close(b'S', &q1), sync()]));
        c.recv(&mut conn, &[close_complete(), ready(b'I')]);
        assert!(c.rw.is_idle());
        assert_eq!(conn.names(), [q2]);
    }

    #[test]
    fn statement_evicted_earlier_in_the_pipeline_is_kept_when_needed_again() {
        let mut conn = Conn::new(1);
        let mut c = Client::new();
        let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));
        let (to_server, _) = c.send(
            &mut conn,
            &[
                parse("a", "select 1", &[]),
                bind("", "a"),
                parse("b", "select 2", &[]), // evicts a from the record
                bind("p2", "a"),             // a is still on the server
                execute("p2"),
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q1),
                parse(&q1, "select 1", &[]),
                bind("", &q1),
                close(b'S', &q2),
                parse(&q2, "select 2", &[]),
                bind("p2", &q1),
                execute("p2"),
                sync()
            ])
        );
        let (housekeeping, _) = c.recv(
            &mut conn,
            &[
                close_complete(),
                parse_complete(),
                bind_complete(),
                close_complete(),
                parse_complete(),
                bind_complete(),
                complete("SELECT 1"),
                ready(b'I'),
            ],
        );
        assert_eq!(housekeeping, all(&[close(b'S', &q2), sync()]));
        assert_eq!(conn.names(), [q1]);
    }

    #[test]
    fn close_of_a_statement_is_answered_here() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "s1", "select 1");
        let q = sn("select 1", &[]);
        let (to_server, to_client) = c.send(
            &mut conn,
            &[close(b'S', "s1"), close(b'S', "never"), sync()],
        );
        assert_eq!(to_server, all(&[sync()]));
        assert_eq!(to_client, all(&[close_complete(), close_complete()]));
        assert!(conn.has(&q), "other clients may use it");
        let (_, seen) = c.recv(&mut conn, &[ready(b'I')]);
        assert_eq!(seen, all(&[ready(b'I')]));
        let (_, to_client) = c.send(&mut conn, &[bind("", "s1"), sync()]);
        assert_eq!(to_client, all(&[missing("s1")]));
        c.recv(&mut conn, &[ready(b'I')]);

        // Portals and the unnamed statement are the server's business.
        let (to_server, _) = c.send(&mut conn, &[close(b'P', "cur"), close(b'S', ""), sync()]);
        assert_eq!(
            to_server,
            all(&[close(b'P', "cur"), close(b'S', ""), sync()])
        );
        let (_, seen) = c.recv(
            &mut conn,
            &[close_complete(), close_complete(), ready(b'I')],
        );
        assert_eq!(
            seen,
            all(&[close_complete(), close_complete(), ready(b'I')])
        );
    }

    #[test]
    fn duplicate_parse_fails_as_in_postgresql() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "s1", "select 1");
        let (to_server, to_client) = c.send(
            &mut conn,
            &[parse("s1", "select 2", &[]), bind("", "s1"), sync()],
        );
        assert_eq!(to_server, all(&[sync()]));
        assert_eq!(
            to_client,
            all(&[error("42P05", "prepared statement \"s1\" already exists")])
        );
    }

    #[test]
    fn server_saying_our_statement_is_missing_corrects_the_record() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "s1", "select 1");
        let q = sn("select 1", &[]);
        // Someone ran SQL DEALLOCATE on our name behind the record's back.
        let (to_server, _) = c.send(&mut conn, &[bind("", "s1"), execute(""), sync()]);
        assert_eq!(to_server, all(&[bind("", &q), execute(""), sync()]));
        let gone = error(
            "26000",
            &format!("prepared statement \"{q}\" does not exist"),
        );
        let (_, seen) = c.recv(&mut conn, &[gone.clone(), ready(b'I')]);
        assert_eq!(seen, all(&[gone, ready(b'I')]));
        assert!(!conn.has(&q));
        let (to_server, _) = c.send(&mut conn, &[bind("", "s1"), execute(""), sync()]);
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q),
                parse(&q, "select 1", &[]),
                bind("", &q),
                execute(""),
                sync()
            ])
        );
    }

    #[test]
    fn least_recently_used_client_name_is_forgotten() {
        let mut conn = Conn::new(8);
        let mut c = Client {
            rw: Rewriter::new(2, KEY),
        };
        c.prepare(&mut conn, "a", "select 1");
        c.prepare(&mut conn, "b", "select 2");
        c.send(&mut conn, &[bind("", "a"), sync()]);
        c.recv(&mut conn, &[bind_complete(), ready(b'I')]);
        c.prepare(&mut conn, "c", "select 3");
        assert_eq!(c.rw.statements().len(), 2);
        let (_, to_client) = c.send(&mut conn, &[bind("", "b"), sync()]);
        assert_eq!(to_client, all(&[missing("b")]));
        c.recv(&mut conn, &[ready(b'I')]);
        let (_, to_client) = c.send(&mut conn, &[bind("", "a"), bind("", "c"), sync()]);
        assert!(to_client.is_empty());
    }

    #[test]
    fn asynchronous_messages_pass_wherever_they_arrive() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.send(
            &mut conn,
            &[
                parse("s1", "select 1", &[]),
                bind("", "s1"),
                execute(""),
                sync(),
            ],
        );
        let status = frame(b'S', &[z("TimeZone"), z("UTC")].concat());
        let notification = frame(b'A', &[vec![0, 0, 0, 7], z("chan"), z("")].concat());
        let (_, seen) = c.recv(
            &mut conn,
            &[
                notice(),
                close_complete(), // hidden
                status.clone(),
                parse_complete(),
                notification.clone(),
                bind_complete(),
                notice(),
                complete("SELECT 0"),
                ready(b'I'),
            ],
        );
        assert_eq!(
            seen,
            all(&[
                notice(),
                status,
                parse_complete(),
                notification,
                bind_complete(),
                notice(),
                complete("SELECT 0"),
                ready(b'I')
            ])
        );
        assert!(c.rw.is_idle());
    }

    #[test]
    fn describe_of_statements_and_portals() {
        let (mut one, mut two) = (Conn::new(8), Conn::new(8));
        let mut c = Client::new();
        c.prepare(&mut one, "s1", "select 1");
        let q = sn("select 1", &[]);
        let (to_server, _) = c.send(
            &mut two,
            &[
                describe(b'S', "s1"),
                describe(b'P', ""),
                describe(b'S', ""),
                sync(),
            ],
        );
        assert_eq!(
            to_server,
            all(&[
                close(b'S', &q),
                parse(&q, "select 1", &[]),
                describe(b'S', &q),
                describe(b'P', ""),
                describe(b'S', ""),
                sync()
            ])
        );
        let (_, seen) = c.recv(
            &mut two,
            &[
                close_complete(),
                parse_complete(),
                parameters(),
                row_description(),
                no_data(),
                parameters(),
                no_data(),
                ready(b'I'),
            ],
        );
        assert_eq!(
            seen,
            all(&[
                parameters(),
                row_description(),
                no_data(),
                parameters(),
                no_data(),
                ready(b'I')
            ])
        );
        let (to_server, to_client) = c.send(&mut two, &[describe(b'S', "zz"), sync()]);
        assert_eq!(to_server, all(&[sync()]));
        assert_eq!(to_client, all(&[missing("zz")]));
    }

    #[test]
    fn copy_out_through_execute_passes_through() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "out", "copy t to stdout");
        c.send(&mut conn, &[bind("", "out"), execute(""), sync()]);
        let (_, seen) = c.recv(&mut conn, &[bind_complete(), frame(b'H', &[0, 0, 0])]);
        assert_eq!(seen, all(&[bind_complete(), frame(b'H', &[0, 0, 0])]));
        assert_eq!(
            c.rw.server_route(b'd'),
            Route::Stream,
            "COPY data need not be held"
        );
        assert_eq!(c.rw.server_route(b'D'), Route::Stream);
        assert_eq!(c.rw.server_route(b'C'), Route::Whole);
        let rows = [copy_data(b"1\n"), copy_data(b"2\n"), frame(b'c', &[])];
        let (_, seen) = c.recv(&mut conn, &rows);
        assert_eq!(seen, all(&rows));
        let (_, seen) = c.recv(&mut conn, &[complete("COPY 2"), ready(b'I')]);
        assert_eq!(seen, all(&[complete("COPY 2"), ready(b'I')]));
        assert!(c.rw.is_idle());
    }

    #[test]
    fn copy_in_through_execute_with_the_sync_the_server_ignores() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "in", "copy t from stdin");
        let q = sn("copy t from stdin", &[]);
        // As libpq and tokio-postgres do: Sync right after Execute, then the
        // data, CopyDone and another Sync; only the second is answered.
        let (to_server, _) = c.send(&mut conn, &[bind("", "in"), execute(""), sync()]);
        assert_eq!(to_server, all(&[bind("", &q), execute(""), sync()]));
        let (_, seen) = c.recv(&mut conn, &[bind_complete(), frame(b'G', &[0, 0, 0])]);
        assert_eq!(seen, all(&[bind_complete(), frame(b'G', &[0, 0, 0])]));
        assert_eq!(c.rw.client_route(b'd'), Route::Stream);
        let data = [copy_data(b"1\n"), copy_data(b"2\n"), copy_done(), sync()];
        let (to_server, to_client) = c.send(&mut conn, &data);
        assert_eq!(to_server, all(&data));
        assert!(to_client.is_empty());
        let (_, seen) = c.recv(&mut conn, &[complete("COPY 2"), ready(b'I')]);
        assert_eq!(seen, all(&[complete("COPY 2"), ready(b'I')]));
        assert!(c.rw.is_idle(), "the ignored Sync is owed nothing");

        // The same with everything sent before the server answered.
        let all_at_once = [
            bind("", "in"),
            execute(""),
            sync(),
            copy_data(b"3\n"),
            copy_done(),
            sync(),
        ];
        c.send(&mut conn, &all_at_once);
        c.recv(
            &mut conn,
            &[
                bind_complete(),
                frame(b'G', &[0, 0, 0]),
                complete("COPY 1"),
                ready(b'I'),
            ],
        );
        assert!(c.rw.is_idle());
    }

    #[test]
    fn unsynced_extended_messages_keep_the_connection() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.send(&mut conn, &[parse("", "select 1", &[]), flush()]);
        c.recv(&mut conn, &[parse_complete()]);
        assert!(!c.rw.is_idle(), "the client's implicit transaction is open");
        c.send(&mut conn, &[sync()]);
        c.recv(&mut conn, &[ready(b'I')]);
        assert!(c.rw.is_idle());
        assert_eq!(c.rw.transaction_status(), b'I');
    }

    #[test]
    fn unexplained_server_message_is_an_error() {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let e =
            c.rw.server_message(b'2', &[], &mut conn, &mut to_server, &mut to_client)
                .unwrap_err();
        assert_eq!(e.sqlstate(), "08P01");
        assert!(matches!(e, PreparedError::Server(_)));
    }

    #[test]
    fn malformed_messages_are_protocol_violations() {
        let mut conn = Conn::new(8);
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let cases: [(u8, &[u8]); 7] = [
            (b'P', b"name-without-end"),
            (b'P', b"n\0select 1\0"),           // no type count
            (b'P', b"n\0select 1\0\0\x01\0\0"), // count says one OID, half given
            (b'B', b"portal\0stmt-without-end"),
            (b'D', b"X\0"),
            (b'C', b"S"),
            (b'Q', b"select 1"),
        ];
        for (tag, body) in cases {
            let mut rw = Rewriter::new(10, KEY);
            let e = rw
                .client_message(tag, body, &mut conn, &mut to_server, &mut to_client)
                .unwrap_err();
            assert_eq!(e.sqlstate(), "08P01", "{} {body:?}", tag as char);
            assert!(rw.is_idle() && rw.statements().is_empty());
        }
        assert!(to_server.is_empty() && to_client.is_empty());
    }

    #[test]
    fn too_many_requests_outstanding_is_refused() {
        let mut conn = Conn::new(8);
        let mut rw = Rewriter::new(10, KEY);
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        for _ in 0..MAX_OUTSTANDING {
            rw.client_message(b'S', &[], &mut conn, &mut to_server, &mut to_client)
                .unwrap();
        }
        let e = rw
            .client_message(b'S', &[], &mut conn, &mut to_server, &mut to_client)
            .unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert_eq!(rw.backlog(), MAX_OUTSTANDING);
    }

    #[test]
    fn simple_query_sql_recognised() {
        let cases: [(&[u8], Sql); 12] = [
            (b"DEALLOCATE ALL", Sql::ForgetAll),
            (b"deallocate prepare all ;;", Sql::ForgetAll),
            (b"\n DISCARD  all;\n", Sql::ForgetAll),
            (b"DEALLOCATE s1", Sql::Deallocate(b"s1".to_vec())),
            (b"DEALLOCATE S1", Sql::Deallocate(b"s1".to_vec())),
            (b"DEALLOCATE \"S\"\"1\"", Sql::Deallocate(b"S\"1".to_vec())),
            (b"DEALLOCATE \"all\"", Sql::Deallocate(b"all".to_vec())),
            (b"DEALLOCATE prepare", Sql::Deallocate(b"prepare".to_vec())),
            (
                b"DEALLOCATE PREPARE \"x y\"",
                Sql::Deallocate(b"x y".to_vec()),
            ),
            (b"DISCARD PLANS", Sql::Other),
            (b"DEALLOCATE a; DEALLOCATE b", Sql::Other),
            (b"/* c */ DISCARD ALL", Sql::Other),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{}", String::from_utf8_lossy(sql));
        }
    }

    #[test]
    fn siphash_matches_the_reference() {
        // Reference vector of the SipHash paper: key 00..0f, empty input.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(siphash24(k0, k1, b""), 0x726f_db47_dd0e_0e31);
        // The standard library's (deprecated, but still SipHash-2-4).
        let data: Vec<u8> = (0u8..=80).collect();
        for len in 0..data.len() {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(KEY[0], KEY[1]);
            std::hash::Hasher::write(&mut h, &data[..len]);
            let want = std::hash::Hasher::finish(&h);
            assert_eq!(
                siphash24(KEY[0], KEY[1], &data[..len]),
                want,
                "length {len}"
            );
        }
    }

    #[test]
    fn server_names_round_trip() {
        assert_eq!(server_name(0xab), "pgc_00000000000000ab");
        assert_eq!(server_name_hash("pgc_00000000000000ab"), Some(0xab));
        assert_eq!(server_name_hash(&server_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "pgc_00000000000000AB",
            "pgc_ab",
            "xyz_00000000000000ab",
            "pgc_+000000000000000",
        ] {
            assert_eq!(server_name_hash(bad), None, "{bad}");
        }
    }

    #[test]
    fn texts_are_stored_once() {
        let mut names = ClientStatements::new(10);
        let a = names.intern(KEY, &text("select 1", &[])).unwrap();
        let b = names.intern(KEY, &text("select 1", &[])).unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        names.insert(b"x", a);
        names.insert(b"y", b);
        assert_eq!(names.len(), 2);
        assert_eq!(names.texts.len(), 1);
    }
}
