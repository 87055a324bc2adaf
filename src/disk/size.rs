//! Size syntax as disko and sgdisk read it, and a check that a GPT layout fits a device of a
//! given size, following sgdisk's placement rules (disko-semantics §3.6). The exact geometry is
//! the table writers' business; this only has to say, before anything is touched, whether sgdisk
//! would refuse a partition.

/// disko's partition `size`: `100%` or `[0-9]+[KMGTP]?`.
pub fn valid_partition_size(s: &str) -> bool {
    if s == "100%" {
        return true;
    }
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'P']);
    s.len() - digits.len() <= 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A swap file or zvol size: `[0-9]+[KMGTP]` (disko also lets a swap file's size be empty).
pub fn valid_unit_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'P']);
    s.len() - digits.len() == 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An LV size as `lvcreate` takes it: `-L <n>[unit]` or `-l <n>%[FREE|VG|PVS|ORIGIN]`.
pub fn valid_lv_size(s: &str) -> bool {
    if let Some((n, rest)) = s.split_once('%') {
        return !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && ["", "FREE", "VG", "PVS", "ORIGIN"].contains(&rest);
    }
    let digits = s.trim_end_matches(|c: char| "bBsSkKmMgGtTpPeE".contains(c));
    s.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// An sgdisk start or end value: `[+-]<n>[KMGTPE]` (any case), or `<n>s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SgValue {
    pub sign: Option<char>,
    /// In sectors.
    pub sectors: u64,
}

pub fn parse_sgdisk(s: &str, sector_size: u64) -> Option<SgValue> {
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (Some('+'), &s[1..]),
        Some(b'-') => (Some('-'), &s[1..]),
        _ => (None, s),
    };
    let (digits, mult) = match rest.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&rest[..rest.len() - 1], 1u64 << 10),
        b'M' => (&rest[..rest.len() - 1], 1 << 20),
        b'G' => (&rest[..rest.len() - 1], 1 << 30),
        b'T' => (&rest[..rest.len() - 1], 1 << 40),
        b'P' => (&rest[..rest.len() - 1], 1 << 50),
        b'E' => (&rest[..rest.len() - 1], 1 << 60),
        b'S' => (&rest[..rest.len() - 1], sector_size),
        _ => (rest, sector_size),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(SgValue {
        sign,
        sectors: n.checked_mul(mult)? / sector_size,
    })
}

/// One partition as the fit check needs it.
pub struct FitPart<'a> {
    pub start: &'a str,
    pub end: &'a str,
    pub alignment: u64,
}

/// Why a partition would not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// Position in the list given.
    pub index: usize,
    pub reason: String,
}

/// Places `parts` one after another as disko's per-partition `sgdisk --align-end --new` calls
/// would on an empty GPT disk of `bytes` bytes, and reports the first that sgdisk would refuse.
pub fn check_gpt_fit(bytes: u64, sector_size: u64, parts: &[FitPart]) -> Result<(), NoFit> {
    let total = bytes / sector_size;
    let entry_sectors = (128 * 128u64).div_ceil(sector_size);
    let first_usable = 2 + entry_sectors;
    let Some(last_usable) = total.checked_sub(2 + entry_sectors) else {
        return Err(NoFit {
            index: 0,
            reason: format!("the device ({bytes} bytes) is too small for a GPT at all"),
        });
    };
    let default_align = (2048 * 512 / sector_size).max(1);
    let mut used: Vec<(u64, u64)> = Vec::new();
    for (index, p) in parts.iter().enumerate() {
        let fail = |reason: String| Err(NoFit { index, reason });
        let mut align = if used.is_empty() {
            default_align
        } else {
            let mut a = default_align;
            while a > 1 && used.iter().any(|(s, _)| s % a != 0) {
                a /= 2;
            }
            if total >= 585_937_500 { a.max(8) } else { a }
        };
        if p.alignment != 0 {
            align = p.alignment;
        }
        let free = free_blocks(first_usable, last_usable, &used);
        let Some(&(fb_start, fb_end)) = free.iter().max_by_key(|(s, e)| (e - s, u64::MAX - s))
        else {
            return fail("no free space is left on the device".into());
        };
        let round_up = |x: u64| x.div_ceil(align) * align;
        let mut low = round_up(fb_start);
        if low > fb_end {
            low = fb_start;
        }
        let Some(start_v) = parse_sgdisk(p.start, sector_size) else {
            return fail(format!("`{}` is not an sgdisk start", p.start));
        };
        let Some(end_v) = parse_sgdisk(p.end, sector_size) else {
            return fail(format!("`{}` is not an sgdisk end", p.end));
        };
        let start = match start_v {
            SgValue { sectors: 0, .. } => low,
            SgValue {
                sign: Some('+'),
                sectors,
            } => low + sectors,
            SgValue {
                sign: Some('-'),
                sectors,
            } => fb_end.saturating_sub(sectors),
            SgValue { sectors, .. } => sectors,
        };
        // An explicit start moves to the alignment multiple before it when that is free.
        let start = if start % align != 0 && is_free(start / align * align, &used, first_usable) {
            start / align * align
        } else if start % align != 0 {
            round_up(start)
        } else {
            start
        };
        let Some(&(_, block_end)) = free_blocks(first_usable, last_usable, &used)
            .iter()
            .find(|(s, e)| *s <= start && start <= *e)
        else {
            return fail(format!(
                "its start (sector {start}) is not free space on the device (usable sectors \
                 {first_usable} to {last_usable})"
            ));
        };
        let mut high = block_end;
        if (high + 1) % align != 0 && (high + 1) / align * align > start {
            high = (high + 1) / align * align - 1;
        }
        let end = match end_v {
            SgValue { sectors: 0, .. } => high,
            SgValue {
                sign: Some('+'),
                sectors,
            } => start + sectors - 1,
            SgValue {
                sign: Some('-'),
                sectors,
            } => match high.checked_sub(sectors) {
                Some(e) => e,
                None => return fail(format!("`{}` leaves no room", p.end)),
            },
            SgValue { sectors, .. } => sectors,
        };
        if end < start {
            return fail(format!(
                "it would end (sector {end}) before it starts (sector {start})"
            ));
        }
        if end > block_end {
            let need = (end - start + 1) * sector_size;
            let have = (block_end - start + 1) * sector_size;
            return fail(format!(
                "it needs {need} bytes from sector {start} but only {have} bytes are free there \
                 (the device has {bytes} bytes)"
            ));
        }
        used.push((start, end));
    }
    Ok(())
}

fn free_blocks(first: u64, last: u64, used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut used = used.to_vec();
    used.sort();
    let mut out = Vec::new();
    let mut at = first;
    for (s, e) in used {
        if s > at {
            out.push((at, s - 1));
        }
        at = at.max(e + 1);
    }
    if at <= last {
        out.push((at, last));
    }
    out
}

fn is_free(sector: u64, used: &[(u64, u64)], first: u64) -> bool {
    sector >= first && !used.iter().any(|(s, e)| *s <= sector && sector <= *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p<'a>(start: &'a str, end: &'a str) -> FitPart<'a> {
        FitPart {
            start,
            end,
            alignment: 0,
        }
    }

    #[test]
    fn size_syntax_is_disko_s() {
        for ok in ["100%", "0", "1M", "512M", "10G", "3T"] {
            assert!(valid_partition_size(ok), "{ok}");
        }
        for bad in ["50%", "1.5G", "1m", "1MiB", "", "M", "1MM", "-1G"] {
            assert!(!valid_partition_size(bad), "{bad}");
        }
        assert!(valid_lv_size("100%FREE") && valid_lv_size("10M") && valid_lv_size("100%"));
        assert!(!valid_lv_size("lots") && !valid_lv_size("50%ALL"));
    }

    #[test]
    fn gpt_fit_follows_sgdisk() {
        const MIB: u64 = 1 << 20;
        // 1 GiB disk: ESP 512M + root 100% fits.
        let disk = 1024 * MIB;
        assert_eq!(
            check_gpt_fit(disk, 512, &[p("0", "+512M"), p("0", "-0")]),
            Ok(())
        );
        // 2 GiB of fixed partitions on a 1 GiB disk does not.
        let err = check_gpt_fit(disk, 512, &[p("0", "+512M"), p("0", "+600M")]).unwrap_err();
        assert_eq!(err.index, 1);
        // sgdisk's end for "+X" is exact: 1023 MiB after a 1 MiB start fills to 1024 MiB,
        // which passes the last usable sector (total - 34).
        assert!(check_gpt_fit(disk, 512, &[p("0", "+1022M")]).is_ok());
        assert!(check_gpt_fit(disk, 512, &[p("0", "+1023M")]).is_err());
        // size "0" (end "+0") fills the free block (§13.5), so a second one finds no room.
        assert!(check_gpt_fit(disk, 512, &[p("0", "+0")]).is_ok());
        assert!(check_gpt_fit(disk, 512, &[p("0", "+0"), p("0", "+1M")]).is_err());
        // "-1G" on a 1 GiB disk leaves nothing.
        assert!(check_gpt_fit(disk, 512, &[p("0", "-1G")]).is_err());
    }
}
