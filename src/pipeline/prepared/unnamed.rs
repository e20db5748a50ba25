//! The client's unnamed statement, carried across connections.
//!
//! A pooled connection keeps whatever unnamed statement its last user
//! parsed, so a Bind or Describe of `""` sent on a connection where this
//! client has not parsed one would use another client's statement. The
//! client's last unnamed Parse is kept, and sent again, hidden, before a
//! Bind or Describe of `""` on any connection that does not have it. With
//! none kept the request is refused as PostgreSQL refuses it: no unnamed
//! statement exists.
//!
//! PostgreSQL drops the unnamed statement at the next unnamed Parse, at a
//! simple Query and at a Close of it; those drop the kept copy too.

/// What the rewriter needs to carry the unnamed statement.
#[derive(Debug, Default)]
pub(super) struct Unnamed {
    /// Body of the client's last unnamed Parse, reused as a buffer.
    parse: Vec<u8>,
    /// `parse` holds a statement the client may still use.
    kept: bool,
    /// The attached connection has the client's statement: parsed there
    /// since it was attached.
    on_connection: bool,
}

/// What to do before a Bind or Describe of the unnamed statement.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Before<'a> {
    /// The connection has it: send the request as it is.
    Nothing,
    /// Send this Parse body first, its answer hidden.
    Parse(&'a [u8]),
    /// The client has no unnamed statement: refuse the request.
    Refuse,
}

impl Unnamed {
    /// Another connection, or the same one after others may have used it.
    pub(super) fn attached(&mut self) {
        self.on_connection = false;
    }

    /// The client's unnamed Parse, sent on the attached connection.
    pub(super) fn parsed(&mut self, body: &[u8]) {
        self.parse.clear();
        self.parse.extend_from_slice(body);
        self.kept = true;
        self.on_connection = true;
    }

    /// A simple Query or a Close of the unnamed statement: gone on the
    /// server, and for the client.
    pub(super) fn dropped(&mut self) {
        self.kept = false;
        self.on_connection = false;
    }

    /// An unnamed Parse failed or was skipped: the connection does not
    /// have the statement. The client's own failed Parse leaves it with
    /// none, as PostgreSQL drops the old one before parsing.
    pub(super) fn not_parsed(&mut self, injected: bool) {
        self.on_connection = false;
        if !injected {
            self.kept = false;
        }
    }

    /// Called for a Bind or Describe of `""`; after `Parse` the connection
    /// has the statement.
    pub(super) fn before_use(&mut self) -> Before<'_> {
        if self.on_connection {
            Before::Nothing
        } else if self.kept {
            self.on_connection = true;
            Before::Parse(&self.parse)
        } else {
            Before::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_where_parsed_nothing_is_added() {
        let mut u = Unnamed::default();
        u.attached();
        u.parsed(b"\0select 1\0\0\0");
        assert_eq!(u.before_use(), Before::Nothing);
    }

    #[test]
    fn on_another_connection_the_parse_goes_first_once() {
        let mut u = Unnamed::default();
        u.parsed(b"\0select $1\0\0\0");
        u.attached();
        assert_eq!(u.before_use(), Before::Parse(b"\0select $1\0\0\0"));
        assert_eq!(u.before_use(), Before::Nothing);
    }

    #[test]
    fn without_a_parse_or_after_a_query_it_is_refused() {
        let mut u = Unnamed::default();
        u.attached();
        assert_eq!(u.before_use(), Before::Refuse);
        u.parsed(b"\0select 1\0\0\0");
        u.dropped();
        assert_eq!(u.before_use(), Before::Refuse);
        u.attached();
        assert_eq!(u.before_use(), Before::Refuse);
    }
}
