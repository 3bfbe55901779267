//! The envelope in Avro binary without the generic `Value` tree, for records written with this
//! build's schema (the common case; any other writer schema goes through apache-avro's resolving
//! reader in `codec.rs`).
//!
//! The envelope's own fields are a fixed sequence of strings, longs and string maps, written and
//! read here directly. The body is written and read by apache-avro's schema-aware serde
//! serializer and deserializer with the body kind's own schema: no `Value`, no per-record field
//! lookup tables. Every stage encodes or decodes every record, and the `Value` path cost about a
//! fifth of a pass-through stage's CPU. The bytes are the same as the generic writer's (tested
//! below for every body kind), so readers of any Avro library see no difference.

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::types::{Body, Envelope, Map, Source};
use crate::{BODIES, SchemaError};

/// Writer and reader of one body kind, in union order.
struct BodyCodec {
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

static BODY_CODECS: LazyLock<Vec<BodyCodec>> = LazyLock::new(|| {
    BODIES
        .iter()
        .map(|(name, json)| {
            let schema: &'static Schema = Box::leak(Box::new(
                Schema::parse_str(json).unwrap_or_else(|e| panic!("{name} does not parse: {e}")),
            ));
            BodyCodec {
                writer: GenericDatumWriter::builder(schema)
                    .build()
                    .unwrap_or_else(|e| panic!("{name} has no datum writer: {e}")),
                reader: GenericDatumReader::builder(schema)
                    .build()
                    .unwrap_or_else(|e| panic!("{name} has no datum reader: {e}")),
            }
        })
        .collect()
});

/// Appends the Avro binary encoding of `envelope` to `out`.
pub(crate) fn write_envelope(out: &mut Vec<u8>, envelope: &Envelope) -> Result<(), SchemaError> {
    put_str(out, &envelope.event_id);
    put_long(out, envelope.event_time);
    put_long(out, envelope.ingest_time);
    put_str(out, &envelope.tenant_id);
    put_str(out, &envelope.source.kind);
    put_str(out, &envelope.source.id);
    put_str(out, &envelope.schema_name);
    put_long(out, i64::from(envelope.schema_version));
    put_map(out, &envelope.attributes);
    put_map(out, &envelope.tags);
    let index = envelope.body.union_index();
    put_long(out, i64::from(index));
    let codec = &BODY_CODECS[index as usize];
    let encode = |e: apache_avro::Error| {
        SchemaError::Encode(format!("{}: {e}", envelope.body.schema_name()))
    };
    let _ = envelope
        .body
        .write_ser(&codec.writer, out)
        .map_err(encode)?;
    Ok(())
}

/// Reads an envelope written with this build's schema from the Avro datum `bytes`.
pub(crate) fn read_envelope(mut bytes: &[u8]) -> Result<Envelope, SchemaError> {
    let input = &mut bytes;
    let event_id = get_str(input, "event_id")?;
    let event_time = get_long(input, "event_time")?;
    let ingest_time = get_long(input, "ingest_time")?;
    let tenant_id = get_str(input, "tenant_id")?;
    let source = Source {
        kind: get_str(input, "source.type")?,
        id: get_str(input, "source.id")?,
    };
    let schema_name = get_str(input, "schema_name")?;
    let schema_version = i32::try_from(get_long(input, "schema_version")?)
        .map_err(|_| SchemaError::Decode("schema_version: out of int range".into()))?;
    let attributes = get_map(input, "attributes")?;
    let tags = get_map(input, "tags")?;
    let index = get_long(input, "body")?;
    let unknown = || SchemaError::Decode(format!("unknown body kind index {index}"));
    let position = u32::try_from(index).map_err(|_| unknown())?;
    let codec = BODY_CODECS.get(position as usize).ok_or_else(unknown)?;
    let body = Body::read_deser(position, &codec.reader, input)
        .map_err(|e| SchemaError::Decode(format!("body kind {index}: {e}")))?
        .ok_or_else(unknown)?;
    Ok(Envelope {
        event_id,
        event_time,
        ingest_time,
        tenant_id,
        source,
        schema_name,
        schema_version,
        attributes,
        tags,
        body,
    })
}

/// Zig-zag variable-length long (Avro `int` and `long` share it).
fn put_long(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    put_long(out, value.len() as i64);
    out.extend_from_slice(value.as_bytes());
}

/// A non-empty map is one block (count, entries) then the empty block, as apache-avro writes it.
fn put_map(out: &mut Vec<u8>, map: &Map) {
    if !map.is_empty() {
        put_long(out, map.len() as i64);
        for (key, value) in map {
            put_str(out, key);
            put_str(out, value);
        }
    }
    out.push(0);
}

fn get_long(input: &mut &[u8], field: &str) -> Result<i64, SchemaError> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = input.split_first() else {
            return Err(SchemaError::Decode(format!("{field}: truncated")));
        };
        *input = rest;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
        }
    }
    Err(SchemaError::Decode(format!("{field}: varint too long")))
}

fn get_str(input: &mut &[u8], field: &str) -> Result<String, SchemaError> {
    let len = usize::try_from(get_long(input, field)?)
        .map_err(|_| SchemaError::Decode(format!("{field}: negative length")))?;
    if input.len() < len {
        return Err(SchemaError::Decode(format!("{field}: truncated")));
    }
    let (text, rest) = input.split_at(len);
    *input = rest;
    String::from_utf8(text.to_vec()).map_err(|_| SchemaError::Decode(format!("{field}: not UTF-8")))
}

/// Any block layout is accepted, including negative counts followed by a block size.
fn get_map(input: &mut &[u8], field: &str) -> Result<Map, SchemaError> {
    let mut map = Map::new();
    loop {
        let count = get_long(input, field)?;
        if count == 0 {
            return Ok(map);
        }
        if count < 0 {
            let _block_bytes = get_long(input, field)?;
        }
        for _ in 0..count.unsigned_abs() {
            let key = get_str(input, field)?;
            let value = get_str(input, field)?;
            let _ = map.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::tests::sample_bodies;
    use crate::{envelope_names, envelope_schema};

    fn envelope(body: Body) -> Envelope {
        Envelope {
            event_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            event_time: 1_700_000_000_000_123,
            ingest_time: -5,
            tenant_id: "acme".into(),
            source: Source {
                kind: "sdk".into(),
                id: "web-js/1.0 ü".into(),
            },
            schema_name: body.schema_name().into(),
            schema_version: 3,
            attributes: Map::from([("bé".into(), String::new())]),
            tags: Map::new(),
            body,
        }
    }

    fn generic_bytes(envelope: &Envelope) -> Vec<u8> {
        let writer = GenericDatumWriter::builder(envelope_schema())
            .build()
            .unwrap();
        writer
            .write_value_to_vec(envelope.to_value().unwrap())
            .unwrap()
    }

    #[test]
    fn every_body_kind_encodes_to_the_generic_writers_bytes_and_back() {
        for body in sample_bodies() {
            let mut envelope = envelope(body);
            let mut fast = Vec::new();
            write_envelope(&mut fast, &envelope).unwrap();
            // Byte equality needs maps of at most one entry: the generic writer's map order is
            // a HashMap's. Larger maps are compared after decoding, below.
            assert_eq!(fast, generic_bytes(&envelope), "{}", envelope.schema_name);
            assert_eq!(read_envelope(&fast).unwrap(), envelope);

            envelope.tags = Map::from([("z".into(), "1".into()), ("a".into(), "2".into())]);
            let _ = envelope.attributes.insert("host".into(), "web-1".into());
            fast.clear();
            write_envelope(&mut fast, &envelope).unwrap();
            assert_eq!(read_envelope(&fast).unwrap(), envelope);
            // And the generic reader reads the fast bytes as the same envelope.
            let value = GenericDatumReader::builder(envelope_schema())
                .build()
                .unwrap()
                .read_value(&mut &fast[..])
                .unwrap()
                .resolve_with_names(envelope_schema(), envelope_names())
                .unwrap();
            assert_eq!(Envelope::from_value(value).unwrap(), envelope);
        }
    }

    #[test]
    fn longs_round_trip_at_the_edges() {
        for value in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            put_long(&mut out, value);
            let mut input = &out[..];
            assert_eq!(get_long(&mut input, "x").unwrap(), value);
            assert!(input.is_empty());
        }
    }

    #[test]
    fn truncated_or_broken_input_is_a_decode_error() {
        let mut bytes = Vec::new();
        write_envelope(&mut bytes, &envelope(sample_bodies().remove(1))).unwrap();
        for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(read_envelope(&bytes[..cut]), Err(SchemaError::Decode(_))),
                "cut at {cut}"
            );
        }
        let mut bad_index = Vec::new();
        put_str(&mut bad_index, "id");
        for _ in 0..2 {
            put_long(&mut bad_index, 0);
        }
        for _ in 0..4 {
            put_str(&mut bad_index, "x");
        }
        put_long(&mut bad_index, 1);
        bad_index.extend([0, 0]);
        put_long(&mut bad_index, 99);
        assert!(
            matches!(read_envelope(&bad_index), Err(SchemaError::Decode(m)) if m.contains("99"))
        );
    }

    #[test]
    fn maps_in_negative_count_blocks_are_read() {
        // count -1, block size, one entry, end: another writer's legal layout.
        let mut block = Vec::new();
        put_long(&mut block, -1);
        put_long(&mut block, 4);
        put_str(&mut block, "k");
        put_str(&mut block, "v");
        block.push(0);
        let mut input = &block[..];
        let map = get_map(&mut input, "m").unwrap();
        assert_eq!(map, Map::from([("k".into(), "v".into())]));
        assert!(input.is_empty());
    }
}
