//! WAL positions (LSNs) as PostgreSQL prints them: `16/B374D848`.

/// `16/B374D848` → 0x16_B374_D848. `None` for anything else.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// 0x16_B374_D848 → `16/B374D848` (PostgreSQL's `%X/%X`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        for v in [
            0u64,
            1,
            0x16_B374_D848,
            0x0_0170_1F08,
            u64::MAX,
            0xFFFF_FFFF,
            1 << 32,
        ] {
            assert_eq!(parse_lsn(&format_lsn(v)), Some(v), "{v:#x}");
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(parse_lsn("0/1701F08"), Some(0x1701F08));
        assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
    }

    #[test]
    fn bad_lsns_are_rejected() {
        for s in ["", "/", "1/", "/1", "x/1", "1/2/3", "123456789/0", "1-2"] {
            assert_eq!(parse_lsn(s), None, "{s:?}");
        }
    }
}
