//! W3C Trace Context (`traceparent`) values, carried in Kafka record headers so a trace follows
//! an event from the gateway through every stage.

use std::fmt;

/// Header name, as the W3C spec and OpenTelemetry propagators spell it.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, for an event that arrived without one.
    pub fn new_root() -> Self {
        let mut trace_id: [u8; 16] = rand::random();
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        Self {
            trace_id,
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// The same trace with a new span: what a stage writes on the records it produces.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Parses a version-00 `traceparent`; anything else (other versions included, per the spec's
    /// forward-compatibility rule, when they carry the same first four fields) is handled, invalid
    /// values give `None` so the caller starts a new trace.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?;
        let span_id: [u8; 8] = decode_hex(span)?;
        let [flags]: [u8; 1] = decode_hex(flags)?;
        let _: [u8; 1] = decode_hex(version)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    pub fn trace_id_hex(&self) -> String {
        let mut out = [0u8; 32];
        write_hex(&mut out, &self.trace_id);
        out.iter().map(|&b| char::from(b)).collect()
    }
}

impl fmt::Display for TraceContext {
    /// `00-{trace id}-{span id}-{flags}`, built in one buffer: every record a stage produces
    /// carries one, so this is on the hot path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        write_hex(&mut out[3..35], &self.trace_id);
        out[35] = b'-';
        write_hex(&mut out[36..52], &self.span_id);
        out[52] = b'-';
        write_hex(&mut out[53..55], &[u8::from(self.sampled)]);
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

fn new_span_id() -> [u8; 8] {
    let mut id: [u8; 8] = rand::random();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

/// Lower-case hex of `bytes` into `out` (two digits per byte).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_spec_example() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(text).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.to_string(), text);
    }

    #[test]
    fn child_keeps_trace_and_changes_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(root.trace_id, child.trace_id);
        assert_ne!(root.span_id, child.span_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }
}
