//! Where GNU parted (3.5) puts a partition for disko's legacy `table` lines
//! (`parted -s DEV -- mkpart [NAME|TYPE] [FS] START END`, then `set N FLAG on`), reproduced:
//!
//! * a position is a number with a unit; SI units (`MB`, and a bare `M`, which parted reads as
//!   megabytes) and `%` are fuzzy: the sector may move by half a unit either way (`radius`);
//!   IEC units (`MiB`) are exact, and an IEC end is one sector before the position;
//! * with parted's default `--align optimal`, starts sit on 1 MiB grains and ends just before
//!   one; the nearest such start and end inside the fuzzy ranges and the free gap win;
//! * if no aligned place exists, the nearest unaligned one is taken, if it is still inside the
//!   ranges (parted warns), otherwise parted in script mode refuses, and so do we;
//! * msdos: primaries take the lowest free slot of 1–4, logicals 5 and up; a logical needs one
//!   free sector before it for its EBR (the first EBR is the extended partition's first sector).

use super::error::TableError;
use super::spec::{LegacyPartType, LegacyPartition};

/// A parsed position: the sector parted aims at and the range it may move within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    sector: i64,
    lo: i64,
    hi: i64,
    iec: bool,
}

/// `ped_unit_parse_custom`, for what disko can pass. `len` is the device size in sectors.
fn parse(text: &str, len: i64, ss: i64) -> Option<Pos> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || ",.-".contains(c)))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let num: f64 = number.parse().ok()?;
    if num > 0.0 && num < 1.0 {
        return None;
    }
    let lower = suffix.to_ascii_lowercase();
    let (unit_size, iec): (i64, bool) = match lower.as_str() {
        "kib" => (1 << 10, true),
        "mib" => (1 << 20, true),
        "gib" => (1 << 30, true),
        "tib" => (1 << 40, true),
        "s" => (ss, false),
        "b" => (1, false),
        "k" | "kb" => (1_000, false),
        "" | "m" | "mb" => (1_000_000, false),
        "g" | "gb" => (1_000_000_000, false),
        "t" | "tb" => (1_000_000_000_000, false),
        "%" => (len * ss / 100, false),
        _ => return None,
    };
    let radius = if iec {
        0
    } else {
        ((unit_size + ss - 1) / ss / 2 - 1).max(0)
    };
    let mut sector = (num * unit_size as f64 / ss as f64) as i64;
    if number.starts_with('-') {
        sector += len;
    }
    let clip = |s: i64| s.clamp(0, len - 1);
    let (lo, hi) = (clip(sector - radius), clip(sector + radius));
    if sector - hi > radius || lo - sector > radius {
        return None;
    }
    Some(Pos {
        sector: clip(sector),
        lo,
        hi,
        iec,
    })
}

/// The aligned sector (`s % grain == offset`) nearest `target` inside `lo..=hi`.
fn align_nearest(target: i64, lo: i64, hi: i64, grain: i64, offset: i64) -> Option<i64> {
    if lo > hi {
        return None;
    }
    let target = target.clamp(lo, hi);
    let down = (target - offset).div_euclid(grain) * grain + offset;
    [down, down + grain]
        .into_iter()
        .filter(|s| (lo..=hi).contains(s))
        .min_by_key(|s| (s - target).abs())
}

/// A free gap a partition may occupy: `first..=last`, and the fewest sectors to leave before
/// the partition (1 for a logical's EBR).
#[derive(Debug, Clone, Copy)]
struct Gap {
    first: i64,
    last: i64,
}

/// The place parted picks for one `mkpart`, given the gaps it may go in.
fn place(
    p: &LegacyPartition,
    label: &str,
    gaps: &[Gap],
    len: i64,
    ss: i64,
    lead: i64,
) -> Result<(u64, u64), TableError> {
    let bad = |field: &'static str, value: &str| TableError::BadPartedValue {
        number: p.number,
        label: label.to_string(),
        field,
        value: value.to_string(),
    };
    let start = parse(&p.start, len, ss).ok_or_else(|| bad("start", &p.start))?;
    let mut end = parse(&p.end, len, ss).ok_or_else(|| bad("end", &p.end))?;
    if start.sector != end.sector && end.iec {
        end.sector -= 1;
        end.lo -= 1;
        end.hi -= 1;
    }
    let grain = (1 << 20) / ss;
    // The gap holding the requested start (or the first one after it).
    let gap = gaps
        .iter()
        .find(|g| start.sector <= g.last && start.sector >= g.first - lead - grain)
        .or_else(|| gaps.iter().find(|g| g.first > start.sector))
        .copied();
    let not_free = |s: i64, e: i64| TableError::DoesNotFit {
        number: p.number,
        label: label.to_string(),
        start: s.max(0) as u64,
        end: e.max(0) as u64,
        first_usable: gaps.first().map_or(0, |g| g.first) as u64,
        last_usable: gaps.last().map_or(0, |g| g.last) as u64,
    };
    let Some(gap) = gap else {
        return Err(not_free(start.sector, end.sector));
    };
    let min_start = gap.first + lead;
    let aligned = align_nearest(
        start.sector,
        start.lo.max(min_start),
        start.hi.min(gap.last),
        grain,
        0,
    )
    .and_then(|s| {
        align_nearest(
            end.sector,
            end.lo.max(s),
            end.hi.min(gap.last),
            grain,
            grain - 1,
        )
        .map(|e| (s, e))
    });
    if let Some((s, e)) = aligned {
        return Ok((s as u64, e as u64));
    }
    // parted's second try, without the alignment: the nearest place, if still in range.
    let s = start.sector.clamp(min_start, gap.last);
    let e = end.sector.clamp(s, gap.last);
    if s < start.lo || s > start.hi || e < end.lo || e > end.hi {
        return Err(not_free(s, e));
    }
    Ok((s as u64, e as u64))
}

/// One partition as parted leaves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placed {
    /// parted's number: list order on GPT; on msdos the slot (1–4) or 5, 6, ... for logicals.
    pub number: u32,
    pub first: u64,
    pub last: u64,
    pub kind: LegacyPartType,
    /// The EBR's LBA, for a logical partition.
    pub ebr: Option<u64>,
}

fn gaps_between(mut used: Vec<(i64, i64)>, first: i64, last: i64) -> Vec<Gap> {
    used.sort();
    let mut gaps = Vec::new();
    let mut at = first;
    for (s, e) in used {
        if s > at {
            gaps.push(Gap {
                first: at,
                last: s - 1,
            });
        }
        at = at.max(e + 1);
    }
    if at <= last {
        gaps.push(Gap { first: at, last });
    }
    gaps
}

/// Lays out a GPT the way `parted mklabel gpt` and the `mkpart` lines do.
pub fn resolve_gpt(
    parts: &[LegacyPartition],
    sectors: u64,
    ss: u64,
) -> Result<Vec<Placed>, TableError> {
    let table = (128 * 128u64).div_ceil(ss) as i64;
    let (len, ss) = (sectors as i64, ss as i64);
    let (first, last) = (2 + table, len - 2 - table);
    let mut used: Vec<(i64, i64)> = Vec::new();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let label = p.name.clone().unwrap_or_default();
        let (s, e) = place(
            p,
            &label,
            &gaps_between(used.clone(), first, last),
            len,
            ss,
            0,
        )?;
        used.push((s as i64, e as i64));
        out.push(Placed {
            number: i as u32 + 1,
            first: s,
            last: e,
            kind: LegacyPartType::Primary,
            ebr: None,
        });
    }
    Ok(out)
}

/// Lays out an msdos table the way `parted mklabel msdos` and the `mkpart` lines do.
pub fn resolve_msdos(
    parts: &[LegacyPartition],
    sectors: u64,
    ss: u64,
) -> Result<Vec<Placed>, TableError> {
    let (len, ss) = (sectors as i64, ss as i64);
    let mut out: Vec<Placed> = Vec::new();
    for p in parts {
        let label = format!("{:?}", p.part_type).to_lowercase();
        let extended = out
            .iter()
            .find(|x| x.kind == LegacyPartType::Extended)
            .cloned();
        let (s, e, number, ebr) = match p.part_type {
            LegacyPartType::Primary | LegacyPartType::Extended => {
                if p.part_type == LegacyPartType::Extended && extended.is_some() {
                    return Err(TableError::Invalid {
                        number: p.number,
                        what: "an msdos table holds one extended partition".into(),
                    });
                }
                let used = out
                    .iter()
                    .filter(|x| x.kind != LegacyPartType::Logical)
                    .map(|x| (x.first as i64, x.last as i64))
                    .collect();
                let (s, e) = place(p, &label, &gaps_between(used, 1, len - 1), len, ss, 0)?;
                let slot = (1..=4).find(|n| !out.iter().any(|x| x.number == *n)).ok_or_else(|| TableError::Invalid {
                    number: p.number,
                    what: "an msdos table holds 4 primary partitions (use an extended one for more)".into(),
                })?;
                (s, e, slot, None)
            }
            LegacyPartType::Logical => {
                let Some(ext) = extended else {
                    return Err(TableError::Invalid {
                        number: p.number,
                        what: "a logical partition needs an extended partition before it".into(),
                    });
                };
                let used = out
                    .iter()
                    .filter(|x| x.kind == LegacyPartType::Logical)
                    .map(|x| (x.first as i64, x.last as i64))
                    .collect();
                let gaps = gaps_between(used, ext.first as i64, ext.last as i64);
                let (s, e) = place(p, &label, &gaps, len, ss, 1)?;
                let number = 5 + out
                    .iter()
                    .filter(|x| x.kind == LegacyPartType::Logical)
                    .count() as u32;
                let first_logical = number == 5;
                (
                    s,
                    e,
                    number,
                    Some(if first_logical { ext.first } else { s - 1 }),
                )
            }
        };
        out.push(Placed {
            number,
            first: s,
            last: e,
            kind: p.part_type,
            ebr,
        });
    }
    // A logical partition placed before an earlier one would break the chain's order.
    let logical: Vec<&Placed> = out
        .iter()
        .filter(|x| x.kind == LegacyPartType::Logical)
        .collect();
    if logical.windows(2).any(|w| w[1].first < w[0].first) {
        return Err(TableError::Table(
            "logical partitions must be listed in disk order".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(part_type: LegacyPartType, start: &str, end: &str) -> LegacyPartition {
        LegacyPartition {
            number: 1,
            part_type,
            fs_type: None,
            name: Some("x".into()),
            start: start.into(),
            end: end.into(),
            flags: vec![],
            bootable: false,
        }
    }

    #[test]
    fn units() {
        let p = parse("1M", 4_194_304, 512).unwrap();
        assert_eq!((p.sector, p.lo, p.hi, p.iec), (1953, 977, 2929, false));
        let p = parse("100MiB", 4_194_304, 512).unwrap();
        assert_eq!((p.sector, p.lo, p.hi), (204_800, 204_800, 204_800));
        assert_eq!(parse("100%", 4_194_304, 512).unwrap().sector, 4_194_303);
        assert!(parse("0.5M", 4_194_304, 512).is_none());
        // 100% on GPT: the aligned end nearest the device end that is still usable.
        assert_eq!(
            align_nearest(4_194_303, 4_173_332, 4_194_270, 2048, 2047),
            Some(4_192_255)
        );
        assert!(parse("12furlongs", 4_194_304, 512).is_none());
    }

    #[test]
    fn measured_with_parted_3_5() {
        use LegacyPartType::*;
        // parted -s IMG -- mklabel gpt; mkpart a 1M 10M; mkpart b 10M 20M (on 2 GiB).
        let got = resolve_gpt(
            &[part(Primary, "1M", "10M"), part(Primary, "10M", "20M")],
            4_194_304,
            512,
        )
        .unwrap();
        assert_eq!(
            (got[0].first, got[0].last, got[1].first, got[1].last),
            (2048, 20479, 20480, 38911)
        );
        // msdos on 6 GiB: primary 1M 100MiB, extended 100MiB 100%, logical 101MiB 200M,
        // logical 200M 4400MiB: the second logical cannot be aligned (its EBR takes the grain).
        let got = resolve_msdos(
            &[
                part(Primary, "1M", "100MiB"),
                part(Extended, "100MiB", "100%"),
                part(Logical, "101MiB", "200M"),
                part(Logical, "200M", "4400MiB"),
            ],
            12_582_912,
            512,
        )
        .unwrap();
        let got: Vec<_> = got
            .iter()
            .map(|p| (p.number, p.first, p.last, p.ebr))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 2048, 204_799, None),
                (2, 204_800, 12_582_911, None),
                (5, 206_848, 391_167, Some(204_800)),
                (6, 391_169, 9_011_199, Some(391_168)),
            ]
        );
        // ... and a third logical at exactly 4400MiB has no room for its EBR: parted refuses.
        let e = resolve_msdos(
            &[
                part(Primary, "1M", "100MiB"),
                part(Extended, "100MiB", "100%"),
                part(Logical, "101MiB", "4400MiB"),
                part(Logical, "4400MiB", "100%"),
            ],
            12_582_912,
            512,
        );
        assert!(e.is_err());
    }
}
