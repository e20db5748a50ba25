//! What the rewriter notes when it sends a request, and how a request the
//! server did not carry out is undone.

use std::collections::HashMap;
use std::rc::Rc;

use super::registry::{ClientStatements, Named, Statement};
use super::unnamed::Unnamed;
use super::ServerStatements;
use crate::pipeline::responses::Fate;

/// Bookkeeping done when a request was sent, to be undone if the server
/// turns out not to have carried it out.
#[derive(Debug)]
pub(super) enum Note {
    /// A named client Parse, sent with the Close before it; `had`: the
    /// record said the connection had the statement before.
    ClientParse {
        name: Box<[u8]>,
        statement: Rc<Statement>,
        evicted: Option<(Box<[u8]>, Rc<Statement>)>,
        had: bool,
        replaced: Replaced,
    },
    /// A Parse added before the client's Bind or Describe.
    InjectedParse(Rc<Statement>, Replaced),
    /// A Bind, or a Describe of the client's name `describes`, of a server
    /// statement the record says the connection has.
    Uses {
        statement: Rc<Statement>,
        describes: Option<Box<[u8]>>,
    },
    /// A client name dropped by Close or SQL DEALLOCATE.
    Forgot {
        name: Box<[u8]>,
        statement: Rc<Statement>,
    },
    /// Every client name, dropped by DEALLOCATE ALL or DISCARD ALL.
    ForgotAll(HashMap<Box<[u8]>, Named>),
    /// A Parse of the unnamed statement: the client's own, or its kept
    /// copy sent again before a Bind or Describe (`injected`).
    UnnamedParse { injected: bool },
}

/// Whether the Close sent before a Parse stood in for a close that was
/// pending (see `Rewriter::send_parse`), which is owed again if the server
/// skips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replaced {
    Nothing,
    PendingClose,
}

/// Puts a close back among those pending; the statement is not to be used.
pub(super) fn retire(retired: &mut Vec<String>, name: &str) {
    if !retired.iter().any(|n| n == name) {
        retired.push(name.to_owned());
    }
}

/// Undoes a note's bookkeeping for a request that failed or was skipped;
/// a server statement found stale goes to `retired`.
pub(super) fn settle(
    names: &mut ClientStatements,
    server: &mut dyn ServerStatements,
    retired: &mut Vec<String>,
    unnamed: &mut Unnamed,
    note: Note,
    fate: Fate,
) {
    if fate == Fate::Done {
        return;
    }
    match note {
        Note::ClientParse {
            name,
            statement,
            evicted,
            had,
            replaced,
        } => {
            names.remove_if(&name, &statement);
            if let Some((old, s)) = evicted {
                names.restore(old, s);
            }
            // Skipped, the Close before it was skipped too, and the server
            // still has what it had; otherwise the Close went through.
            if !(had && fate == Fate::Skipped) {
                server.remove(statement.server_name());
            }
            if fate == Fate::Skipped && replaced == Replaced::PendingClose {
                retire(retired, statement.server_name());
            }
        }
        Note::InjectedParse(statement, replaced) => {
            server.remove(statement.server_name());
            if fate == Fate::Skipped && replaced == Replaced::PendingClose {
                retire(retired, statement.server_name());
            }
        }
        Note::Uses { statement, .. } => match fate {
            // The record was wrong (someone ran SQL DEALLOCATE on our name,
            // or a multi-statement DISCARD ALL went by): correct it, so the
            // client's retry prepares the statement again.
            Fate::Failed {
                sqlstate: UNDEFINED_PREPARED_STATEMENT_CODE,
            } => server.remove(statement.server_name()),
            // Prepared before a change to what it returns: no Bind or
            // Describe of it can succeed again. Forgotten, the next Bind or
            // Describe needing the text prepares it anew, and the stale one
            // is closed.
            Fate::Stale => {
                server.remove(statement.server_name());
                retire(retired, statement.server_name());
            }
            _ => {}
        },
        Note::Forgot { name, statement } => names.restore(name, statement),
        Note::ForgotAll(old) => {
            for (name, named) in old {
                names.restore(name, named.statement);
            }
        }
        // Failed, the server has no unnamed statement; skipped, it has
        // whatever it had: either way not this one.
        Note::UnnamedParse { injected } => unnamed.not_parsed(injected),
    }
}

const UNDEFINED_PREPARED_STATEMENT_CODE: [u8; 5] = *b"26000";
