//! System-set metadata: uids, timestamps, generated names, and small helpers
//! to read and write `metadata` fields of untyped objects.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use time::format_description::FormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A random RFC 4122 version 4 uid.
pub fn new_uid() -> String {
    let hi = random_u64();
    let lo = random_u64();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The 5-character suffix kube-apiserver appends to `generateName`.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

const TIME: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const MICRO_TIME: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// `t` as a UTC date, clamped to the years RFC 3339 can write (0000–9999).
fn utc(t: SystemTime) -> OffsetDateTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs)
        .map(|d| d + time::Duration::nanoseconds(i64::from(since.subsec_nanos())))
        .unwrap_or(PrimitiveDateTime::MAX.assume_utc())
}

fn format(t: SystemTime, format: &[FormatItem<'_>]) -> String {
    // Infallible: every component of a clamped UTC date has a place in the format.
    utc(t).format(format).unwrap_or_default()
}

/// RFC 3339 with second precision (`metav1.Time`).
pub fn format_time(t: SystemTime) -> String {
    format(t, TIME)
}

/// RFC 3339 with microseconds (`metav1.MicroTime`, as in a Lease's `renewTime`).
pub fn format_micro_time(t: SystemTime) -> String {
    format(t, MICRO_TIME)
}

pub fn now() -> String {
    format_time(SystemTime::now())
}

pub fn now_micro() -> String {
    format_micro_time(SystemTime::now())
}

/// Parse the UTC (`Z`) RFC 3339 timestamps this server writes, to the second.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    if !s.ends_with('Z') {
        return None;
    }
    let secs = OffsetDateTime::parse(s, &Rfc3339).ok()?.unix_timestamp();
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A short age like kubectl prints (`5s`, `3m`, `2h`, `4d`).
pub fn age(created: &str) -> String {
    let Some(t) = parse_time(created) else {
        return "<unknown>".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let map = object.as_object_mut().expect("just made an object");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("just made an object")
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_200 + 3661); // 2024-03-01T01:01:01Z
        let s = format_time(t);
        assert_eq!(s, "2024-03-01T01:01:01Z");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert!(format_micro_time(t).starts_with("2024-03-01T01:01:01.000000"));
    }

    fn at(secs: u64, micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_time(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(at(1_798_761_599, 0)), "2026-12-31T23:59:59Z");
        assert_eq!(format_time(at(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(at(4_102_444_799, 0)), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn micro_timestamps_carry_six_fraction_digits() {
        assert_eq!(format_micro_time(at(0, 5)), "1970-01-01T00:00:00.000005Z");
        assert_eq!(
            format_micro_time(at(1_798_761_599, 999_999)),
            "2026-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn parse_reads_utc_only_and_drops_the_fraction() {
        assert_eq!(
            parse_time("2024-03-01T01:01:01.5Z"),
            Some(at(1_709_254_861, 0))
        );
        assert_eq!(parse_time("2024-03-01T01:01:01+02:00"), None);
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_time("not a time"), None);
    }

    #[test]
    fn times_past_year_9999_are_clamped_not_panicked_on() {
        assert_eq!(format_time(at(1 << 40, 0)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn uids_look_like_uuids_and_differ() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_eq!(name_suffix().len(), 5);
    }
}
