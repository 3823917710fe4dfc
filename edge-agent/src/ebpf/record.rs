//! The versioned binary record between the kernel programs (`bpf/record.h`) and
//! the agent, decoded without unsafe code.
//!
//! Invariants:
//! - Total: any byte slice decodes to a record or to a [`RecordError`]; nothing
//!   here panics or reads past the slice.
//! - Only [`VERSION`] is accepted; a record of another version is an error the
//!   caller counts, never a guess.

use std::net::IpAddr;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;
/// Bytes of payload one record carries at most (`TETHER_CHUNK`).
pub const CHUNK: usize = 4096;
pub const FLAG_TRUNCATED: u16 = 1;
pub const FLAG_FAULT: u16 = 2;
const CONNECT_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    /// Plaintext the process wrote (its requests, for a client).
    Write,
    /// Plaintext the process read (its responses, for a client).
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    pub flags: u16,
    pub pid: u32,
    pub tid: u32,
    /// Bytes the whole call carried.
    pub total_len: u32,
    /// The `SSL *` of the connection, unique within the process while it lives.
    pub conn: u64,
    /// CLOCK_MONOTONIC nanoseconds at the call's entry and return.
    pub start_ns: u64,
    pub end_ns: u64,
    /// This chunk's offset within the call's bytes.
    pub offset: u32,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record version {0}, this agent reads version {VERSION}")]
    Version(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("record claims {claimed} payload bytes but carries {carried}")]
    Length { claimed: usize, carried: usize },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

pub fn decode(b: &[u8]) -> Result<Record<'_>, RecordError> {
    if b.len() < HEADER_LEN {
        return Err(RecordError::Short(b.len()));
    }
    if b[0] != VERSION {
        return Err(RecordError::Version(b[0]));
    }
    let kind = match b[1] {
        1 => Kind::Connect,
        2 => Kind::Write,
        3 => Kind::Read,
        k => return Err(RecordError::Kind(k)),
    };
    let chunk_len = u32_at(b, 44) as usize;
    let carried = b.len() - HEADER_LEN;
    if chunk_len > carried || chunk_len > CHUNK {
        return Err(RecordError::Length {
            claimed: chunk_len,
            carried,
        });
    }
    Ok(Record {
        kind,
        flags: u16_at(b, 2),
        pid: u32_at(b, 4),
        tid: u32_at(b, 8),
        total_len: u32_at(b, 12),
        conn: u64_at(b, 16),
        start_ns: u64_at(b, 24),
        end_ns: u64_at(b, 32),
        offset: u32_at(b, 40),
        data: &b[HEADER_LEN..HEADER_LEN + chunk_len],
    })
}

/// A connect record's remote address and port.
pub fn remote(r: &Record<'_>) -> Option<(IpAddr, u16)> {
    if r.kind != Kind::Connect || r.data.len() < CONNECT_LEN {
        return None;
    }
    let family = u16_at(r.data, 0);
    let port = u16::from_be_bytes([r.data[2], r.data[3]]);
    let ip = match family {
        2 => IpAddr::from([r.data[4], r.data[5], r.data[6], r.data[7]]),
        10 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&r.data[4..20]);
            let v6 = std::net::Ipv6Addr::from(a);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
pub fn encode(
    kind: u8,
    pid: u32,
    conn: u64,
    (start, end): (u64, u64),
    offset: u32,
    total: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut b = vec![VERSION, kind, 0, 0];
    b.extend_from_slice(&pid.to_le_bytes());
    b.extend_from_slice(&pid.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&conn.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&end.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_record_decodes_field_by_field() {
        let b = encode(2, 42, 0xdead_beef, (10, 20), 4096, 5000, b"POST /");
        let r = decode(&b).expect("decodes");
        assert_eq!(r.kind, Kind::Write);
        assert_eq!((r.pid, r.tid, r.conn), (42, 42, 0xdead_beef));
        assert_eq!(
            (r.start_ns, r.end_ns, r.offset, r.total_len),
            (10, 20, 4096, 5000)
        );
        assert_eq!(r.data, b"POST /");
    }

    #[test]
    fn connect_records_carry_v4_and_v6_addresses() {
        let mut d = vec![2, 0, 0x01, 0xbb, 104, 18, 7, 192];
        d.resize(CONNECT_LEN, 0);
        let b = encode(1, 7, 0, (1, 1), 0, 20, &d);
        let r = decode(&b).expect("decodes");
        assert_eq!(remote(&r), Some(("104.18.7.192".parse().expect("ip"), 443)));
        let mut d6 = vec![10, 0, 0x20, 0xfb];
        d6.extend_from_slice(
            &"2606:4700::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        let b = encode(1, 7, 0, (1, 1), 0, 20, &d6);
        assert_eq!(
            remote(&decode(&b).expect("decodes")),
            Some(("2606:4700::1".parse().expect("ip"), 8443))
        );
    }

    #[test]
    fn short_foreign_and_lying_records_are_errors() {
        assert_eq!(decode(&[1, 2, 3]), Err(RecordError::Short(3)));
        let mut b = encode(2, 1, 1, (1, 1), 0, 3, b"abc");
        b[0] = 2;
        assert_eq!(decode(&b), Err(RecordError::Version(2)));
        let mut b = encode(9, 1, 1, (1, 1), 0, 3, b"abc");
        assert_eq!(decode(&b), Err(RecordError::Kind(9)));
        b[1] = 2;
        b.truncate(HEADER_LEN + 1);
        assert_eq!(
            decode(&b),
            Err(RecordError::Length {
                claimed: 3,
                carried: 1
            })
        );
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in 0..2000usize {
            let mut b: Vec<u8> = (0..(n % 120))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if b.len() > 1 {
                b[0] = VERSION;
            }
            let _ = decode(&b).map(|r| remote(&r));
        }
    }
}
