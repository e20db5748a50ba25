//! RowDescription ('T'): a field count, then per field its name, the table
//! and column it comes from, its type OID, length and modifier, and the
//! format code. The view borrows the body and checks the whole layout once,
//! in `read`, so walking the fields afterwards cannot fail.

use super::message::{put_cstr_bytes, put_i16, put_i32, write_message, BodyReader};
use super::tag::backend;
use super::ProtocolError;

const WHAT: &str = "RowDescription";

/// Bytes of a field after its name: table OID (4), column number (2), type
/// OID (4), type length (2), type modifier (4), format (2).
const FIXED: usize = 18;

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    /// The table's OID, 0 when the column is not a table's.
    pub table: u32,
    /// The column's attribute number in that table, 0 when none.
    pub column: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`; negative for variable-width types.
    pub type_len: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A checked RowDescription body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDescription<'a> {
    count: u16,
    fields: &'a [u8],
}

impl<'a> RowDescription<'a> {
    /// Checks that the body holds exactly the announced number of fields.
    pub fn read(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = BodyReader::named(body, WHAT);
        let count = u16::try_from(r.read_i16()?).map_err(|_| ProtocolError::malformed(WHAT))?;
        let fields = r.clone().remaining();
        for _ in 0..count {
            r.read_cstr_bytes()?;
            r.read_bytes(FIXED)?;
        }
        r.finish()?;
        Ok(RowDescription { count, fields })
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The fields in order.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> {
        let mut r = BodyReader::named(self.fields, WHAT);
        (0..self.count).map_while(move |_| field(&mut r).ok())
    }

    /// Appends a RowDescription of `fields`. At most `i16::MAX` fields fit
    /// the count; PostgreSQL never sends more than 1664.
    pub fn write(fields: &[Field<'_>], out: &mut Vec<u8>) {
        debug_assert!(fields.len() <= i16::MAX as usize);
        write_message(out, backend::ROW_DESCRIPTION, |b| {
            put_i16(b, fields.len() as i16);
            for f in fields {
                put_cstr_bytes(b, f.name);
                put_i32(b, f.table as i32);
                put_i16(b, f.column);
                put_i32(b, f.type_oid as i32);
                put_i16(b, f.type_len);
                put_i32(b, f.type_modifier);
                put_i16(b, f.format);
            }
        });
    }
}

fn field<'a>(r: &mut BodyReader<'a>) -> Result<Field<'a>, ProtocolError> {
    Ok(Field {
        name: r.read_cstr_bytes()?,
        table: r.read_i32()? as u32,
        column: r.read_i16()?,
        type_oid: r.read_i32()? as u32,
        type_len: r.read_i16()?,
        type_modifier: r.read_i32()?,
        format: r.read_i16()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framer::frames;
    use proptest::prelude::*;

    fn field_strategy() -> impl Strategy<Value = (Vec<u8>, u32, i16, u32, i16, i32, i16)> {
        (
            proptest::collection::vec(1u8..=255, 0..16),
            any::<u32>(),
            any::<i16>(),
            any::<u32>(),
            any::<i16>(),
            any::<i32>(),
            0i16..=1,
        )
    }

    proptest! {
        #[test]
        fn round_trips(raw in proptest::collection::vec(field_strategy(), 0..8)) {
            let fields: Vec<Field<'_>> = raw
                .iter()
                .map(|(name, table, column, type_oid, type_len, type_modifier, format)| Field {
                    name,
                    table: *table,
                    column: *column,
                    type_oid: *type_oid,
                    type_len: *type_len,
                    type_modifier: *type_modifier,
                    format: *format,
                })
                .collect();
            let mut wire = Vec::new();
            RowDescription::write(&fields, &mut wire);
            let f = frames(&wire).next().expect("one message");
            prop_assert_eq!(f.tag, backend::ROW_DESCRIPTION);
            let view = RowDescription::read(f.body).unwrap();
            prop_assert_eq!(view.len(), fields.len());
            prop_assert_eq!(view.fields().collect::<Vec<_>>(), fields);
        }

        /// No body, however mangled, makes the reader panic, and whatever
        /// it accepts can be walked to the announced count.
        #[test]
        fn any_body_is_read_or_refused(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(view) = RowDescription::read(&body) {
                prop_assert_eq!(view.fields().count(), view.len());
            }
        }
    }

    #[test]
    fn lengths_are_checked() {
        let mut wire = Vec::new();
        let one = Field {
            name: b"a",
            table: 0,
            column: 0,
            type_oid: 23,
            type_len: 4,
            type_modifier: -1,
            format: 0,
        };
        RowDescription::write(&[one], &mut wire);
        let body = &wire[5..];
        assert!(RowDescription::read(body).is_ok());
        for cut in 0..body.len() {
            assert!(RowDescription::read(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = body.to_vec();
        extra.push(0);
        assert!(RowDescription::read(&extra).is_err(), "trailing bytes");
        let mut more = body.to_vec();
        more[1] = 2;
        assert!(
            RowDescription::read(&more).is_err(),
            "count over the fields"
        );
        assert!(
            matches!(
                RowDescription::read(&[0xff, 0xff]),
                Err(ProtocolError::Malformed { what: WHAT })
            ),
            "negative count"
        );
        let empty = RowDescription::read(&[0, 0]).unwrap();
        assert!(empty.is_empty() && empty.fields().next().is_none());
    }
}
