//! The rewriter proper: client messages in, server messages in, and what
//! each side is to be sent in their place.

use std::rc::Rc;

use super::note::{settle, Note, Replaced};
use super::registry::{result_shape, ClientStatements, Statement};
use super::sql::{classify, Sql};
use super::unnamed::{Before, Unnamed};
use super::{
    PreparedError, ServerStatements, DUPLICATE_PREPARED_STATEMENT, MAX_DEFERRED_CLOSES,
    MAX_OUTSTANDING, UNDEFINED_PREPARED_STATEMENT,
};
use crate::pipeline::responses::{
    Request, Responses, Show, Skipping, Synthetic, STALE_PLAN_MESSAGE,
};
use crate::protocol::extended::{Bind, Parse, Query, Target, TargetKind};
use crate::protocol::message::write_message;
use crate::protocol::sqlstate;
use crate::protocol::tag::{backend, frontend, transaction_status};

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
    /// Found stale and forgotten by the record, still on the server: closed
    /// with `deferred_closes` unless a Parse of the text replaces them
    /// first, but unlike those never taken back into use.
    retired: Vec<String>,
    /// Statement names are the client's own and reach the server as sent
    /// (`max_prepared_statements = 0`): every client message is streamed,
    /// and only the answers owed are tracked, from tags alone.
    pass_through: bool,
    unnamed: Unnamed,
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
            retired: Vec::new(),
            pass_through: false,
            unnamed: Unnamed::default(),
        }
    }

    /// A rewriter that renames nothing: client messages are streamed to
    /// the server untouched (see [`Rewriter::client_streamed`]), so nothing
    /// a client sends is gathered, and statements are the connection's
    /// own business, as on a direct connection.
    pub fn pass_through() -> Self {
        Rewriter {
            pass_through: true,
            ..Rewriter::new(1, [0, 0])
        }
    }

    /// Made by [`Rewriter::pass_through`].
    pub fn is_pass_through(&self) -> bool {
        self.pass_through
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
            && self.retired.is_empty()
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
        self.unnamed.attached();
        self.responses.clear();
        self.skipping = false;
        self.extended_open = false;
        self.deferred_closes.clear();
        self.retired.clear();
    }

    /// A connection was attached for the client's next request: whatever
    /// unnamed statement it has is not the client's.
    pub fn attached(&mut self) {
        self.unnamed.attached();
    }

    /// How to handle a client message with this tag, known from its header.
    pub fn client_route(&self, tag: u8) -> Route {
        if self.skipping && tag != frontend::SYNC {
            Route::Drop
        } else if tag == frontend::COPY_DATA || self.pass_through {
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

    /// A client message the caller forwards without handing it over (its
    /// route was `Stream`), known by its tag: the bookkeeping that does not
    /// need the body. Only a pass-through rewriter streams requests; COPY
    /// data needs none.
    pub fn client_streamed(&mut self, tag: u8) -> Result<(), PreparedError> {
        if !self.pass_through {
            return Ok(());
        }
        let request = match tag {
            frontend::PARSE => Request::Parse,
            frontend::BIND => Request::Bind,
            // A statement's description may start with ParameterDescription;
            // the queue accepts either kind of answer for this entry.
            frontend::DESCRIBE => Request::DescribeStatement,
            frontend::CLOSE => Request::Close,
            frontend::EXECUTE => Request::Execute,
            frontend::FLUSH => {
                self.extended_open = true;
                return Ok(());
            }
            frontend::SYNC if self.responses.in_copy_in() => return Ok(()),
            frontend::SYNC => {
                self.skipping = false;
                self.extended_open = false;
                Request::Sync
            }
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.responses.copy_end();
                return Ok(());
            }
            frontend::QUERY => Request::Query,
            frontend::FUNCTION_CALL => Request::FunctionCall,
            _ => return Ok(()),
        };
        if self.responses.len() >= MAX_OUTSTANDING {
            return Err(PreparedError::TooManyOutstanding);
        }
        if !matches!(
            request,
            Request::Sync | Request::Query | Request::FunctionCall
        ) {
            self.extended_open = true;
        }
        self.responses.sent(request, Show::Pass, None);
        Ok(())
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
                if self.deferred_closes.len() + self.retired.len() >= MAX_DEFERRED_CLOSES {
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
        if tag == backend::ROW_DESCRIPTION || tag == backend::NO_DATA {
            self.note_description(tag, body);
        }
        let (names, retired, unnamed) = (&mut self.names, &mut self.retired, &mut self.unnamed);
        let skipping = self
            .responses
            .server_message(tag, body, to_client, &mut |note, fate| {
                settle(names, server, retired, unnamed, note, fate)
            })?;
        if skipping == Skipping::UntilSync {
            self.skipping = true;
        }
        if !(self.deferred_closes.is_empty() && self.retired.is_empty())
            && self.responses.is_empty()
            && !self.extended_open
            && self.responses.status() == transaction_status::IDLE
        {
            self.close_deferred(to_server);
        }
        Ok(())
    }

    /// A statement description answering the client's Describe of one of
    /// its names: what the name's result is, and the text's now.
    fn note_description(&mut self, tag: u8, body: &[u8]) {
        let Some((
            Request::DescribeStatement,
            Some(Note::Uses {
                statement,
                describes: Some(name),
            }),
        )) = self.responses.head()
        else {
            return;
        };
        let description = (tag == backend::ROW_DESCRIPTION).then_some(body);
        if let Some(shape) = result_shape(self.key, description) {
            self.names.described(name, statement, shape);
        }
    }

    /// Closes the statements evicted from the record. Only now, with the
    /// server idle outside a transaction: until the transaction ends a
    /// portal bound from them may still be executed (JDBC fetches a named
    /// portal across Syncs), and closing a statement drops its portals;
    /// right after a client's Sync the server may also be in COPY FROM
    /// STDIN, which a Close would abort. Our own Sync ends them, so that
    /// not even an error could reach into the client's next pipeline.
    fn close_deferred(&mut self, to_server: &mut Vec<u8>) {
        for name in self.deferred_closes.drain(..).chain(self.retired.drain(..)) {
            put_statement_target(to_server, frontend::CLOSE, &name);
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
        let (names, retired, unnamed) = (&mut self.names, &mut self.retired, &mut self.unnamed);
        self.responses
            .synthetic(answer, note, to_client, &mut |note, fate| {
                settle(names, server, retired, unnamed, note, fate)
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

    /// The statement a Bind or Describe of the client's name uses, or
    /// `None` after refusing it as PostgreSQL would: a name the client
    /// does not have, or one whose result has changed since it was
    /// prepared. The latter is known when the client was described the
    /// same text with another result since (a connection's statement that
    /// is older than the change is refused by the server itself, see
    /// `plan_is_stale`); the name then keeps failing, as it would on a
    /// direct connection, though the server statement it maps to has been
    /// prepared anew for the names prepared after the change.
    fn usable(
        &mut self,
        name: &[u8],
        server: &mut dyn ServerStatements,
        to_client: &mut Vec<u8>,
    ) -> Option<Rc<Statement>> {
        if self.names.outdated(name) {
            self.refuse(
                sqlstate::FEATURE_NOT_SUPPORTED,
                STALE_PLAN_MESSAGE.to_owned(),
                server,
                to_client,
            );
            return None;
        }
        let statement = self.names.lookup(name);
        if statement.is_none() {
            self.refuse_missing(name, server, to_client);
        }
        statement
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

    /// Sends the Parse of a statement, replacing whatever the connection
    /// has under its name; the caller queues the Parse's own entry.
    fn send_parse(
        &mut self,
        statement: &Statement,
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
    ) -> Replaced {
        // Close first: the record can miss a statement the server does have
        // (a DISCARD ALL that failed, closes lost with a client that left
        // mid-pipeline, a client's SQL PREPARE of our name, one found
        // stale). Closing a missing statement is no error; parsing an
        // existing name is. That Close stands in for a pending one.
        let name = statement.server_name();
        put_statement_target(to_server, frontend::CLOSE, name);
        self.responses.sent(Request::Close, Show::HideAnswer, None);
        let pending = self.deferred_closes.len() + self.retired.len();
        self.deferred_closes.retain(|n| n != name);
        self.retired.retain(|n| n != name);
        let replaced = if self.deferred_closes.len() + self.retired.len() < pending {
            Replaced::PendingClose
        } else {
            Replaced::Nothing
        };
        statement.write_parse(to_server);
        if let Some(evicted) = server.insert(name) {
            self.deferred_closes.push(evicted);
        }
        replaced
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
            let replaced = self.send_parse(statement, server, to_server);
            self.responses.sent(
                Request::Parse,
                Show::HideAnswer,
                Some(Note::InjectedParse(statement.clone(), replaced)),
            );
        }
    }

    /// Makes sure the connection has the client's unnamed statement before
    /// a Bind or Describe of it; `false` after refusing the request, as
    /// PostgreSQL does when there is none.
    fn ensure_unnamed(
        &mut self,
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> bool {
        match self.unnamed.before_use() {
            Before::Nothing => true,
            Before::Parse(body) => {
                put(to_server, frontend::PARSE, body);
                let note = Note::UnnamedParse { injected: true };
                self.responses
                    .sent(Request::Parse, Show::HideAnswer, Some(note));
                true
            }
            Before::Refuse => {
                let message = "unnamed prepared statement does not exist".to_owned();
                self.refuse(UNDEFINED_PREPARED_STATEMENT, message, server, to_client);
                false
            }
        }
    }

    fn parse(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let Parse { name, text } = Parse::read(body)?;
        if name.is_empty() {
            self.unnamed.parsed(body);
            let note = Note::UnnamedParse { injected: false };
            self.responses.sent(Request::Parse, Show::Pass, Some(note));
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
        // Sent even when the connection has the statement: PostgreSQL
        // analyses a Parse against the schema as it is then, and the
        // connection's statement may predate a change to what the text
        // returns (see `plan_is_stale`), which a Bind of it would then
        // report, though a direct Parse now would succeed.
        let had = server.contains(statement.server_name());
        let replaced = self.send_parse(&statement, server, to_server);
        let note = Note::ClientParse {
            name: name.into(),
            statement,
            evicted,
            had,
            replaced,
        };
        self.responses.sent(Request::Parse, Show::Pass, Some(note));
        Ok(())
    }

    fn bind(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let bind = Bind::read(body)?;
        let name = bind.statement;
        if name.is_empty() {
            if self.ensure_unnamed(server, to_server, to_client) {
                self.responses.sent(Request::Bind, Show::Pass, None);
                put(to_server, frontend::BIND, body);
            }
            return Ok(());
        }
        let Some(statement) = self.usable(name, server, to_client) else {
            return Ok(());
        };
        self.ensure(&statement, server, to_server);
        Bind {
            statement: statement.server_name().as_bytes(),
            ..bind
        }
        .write(to_server);
        let note = Note::Uses {
            statement,
            describes: None,
        };
        self.responses.sent(Request::Bind, Show::Pass, Some(note));
        Ok(())
    }

    fn describe(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let Target { kind, name } = Target::read(frontend::DESCRIBE, body)?;
        if kind == TargetKind::Portal {
            self.responses
                .sent(Request::DescribePortal, Show::Pass, None);
            put(to_server, frontend::DESCRIBE, body);
            return Ok(());
        }
        if name.is_empty() {
            if self.ensure_unnamed(server, to_server, to_client) {
                self.responses
                    .sent(Request::DescribeStatement, Show::Pass, None);
                put(to_server, frontend::DESCRIBE, body);
            }
            return Ok(());
        }
        let Some(statement) = self.usable(name, server, to_client) else {
            return Ok(());
        };
        self.ensure(&statement, server, to_server);
        put_statement_target(to_server, frontend::DESCRIBE, statement.server_name());
        let note = Note::Uses {
            statement,
            describes: Some(name.into()),
        };
        self.responses
            .sent(Request::DescribeStatement, Show::Pass, Some(note));
        Ok(())
    }

    fn close(
        &mut self,
        body: &[u8],
        server: &mut dyn ServerStatements,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Result<(), PreparedError> {
        let Target { kind, name } = Target::read(frontend::CLOSE, body)?;
        if kind == TargetKind::Portal || name.is_empty() {
            if kind == TargetKind::Statement {
                self.unnamed.dropped();
            }
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
        let sql = Query::read(body)?.sql;
        // Any simple query drops the unnamed statement on the server.
        self.unnamed.dropped();
        match classify(sql) {
            Sql::ForgetAll => {
                // The server drops every statement of the session, ours
                // included, and with them any close still pending.
                let old = self.names.take_all();
                server.clear();
                self.deferred_closes.clear();
                self.retired.clear();
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

/// Describe or Close of a server-side statement.
fn put_statement_target(out: &mut Vec<u8>, tag: u8, server_name: &str) {
    Target::statement(server_name.as_bytes()).write(tag, out);
}
