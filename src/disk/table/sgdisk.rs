//! Where sgdisk (gptfdisk 1.0.9) puts a partition for disko's
//! `sgdisk --align-end [--set-alignment=A] --new=I:START:END`, reproduced sector for sector.
//!
//! Each disko partition is a separate sgdisk run, so everything sgdisk derives from the table it
//! loads (the alignment above all) is derived again before each partition, from the partitions
//! made so far. The rules, from gptfdisk's `gpt.cc`, `gptcl.cc` and `support.cc`:
//! * the alignment is 2048 sectors scaled to the sector size (`2048·512/size`), lowered to the
//!   largest power of two dividing every existing start, raised to 8 on disks of 585 937 500
//!   sectors or more; `--set-alignment` overrides it;
//! * `low` is the first sector of the largest free block (the first of equal ones), aligned;
//!   `high` the last sector of the free block holding `low`, with `high + 1` aligned down
//!   (`--align-end`) when the sectors in between are free;
//! * a start or end of `0` (any zero) means the default (`low`, `high`); `+X` is relative to the
//!   start (`start + X - 1` for the end), `-X` is `high - X`; units are powers of 1024 bytes, a
//!   bare number counts sectors;
//! * the start is aligned once more, and must be free, with every sector up to the end free.

use super::error::TableError;
use super::spec::GptPartition;

/// The usable area of a GPT and its sector size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptBounds {
    /// The device size in logical sectors.
    pub sectors: u64,
    pub sector_size: u64,
    pub first_usable: u64,
    pub last_usable: u64,
}

impl GptBounds {
    /// The bounds of a new 128-entry GPT on a device, as `sgdisk --clear` lays it out.
    pub fn new_table(sectors: u64, sector_size: u64) -> GptBounds {
        let table = (128 * 128u64).div_ceil(sector_size);
        let first_usable = 2 + table;
        GptBounds {
            sectors,
            sector_size,
            first_usable,
            last_usable: sectors.saturating_sub(first_usable),
        }
    }
}

/// One partition's place: inclusive first and last LBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    pub number: u32,
    pub first: u64,
    pub last: u64,
}

/// The partitions on the disk as sgdisk sees them while a layout is being laid down.
struct Layout {
    bounds: GptBounds,
    parts: Vec<Extent>,
    alignment: u64,
}

impl Layout {
    fn is_free(&self, sector: u64) -> bool {
        sector >= self.bounds.first_usable
            && sector <= self.bounds.last_usable
            && !self
                .parts
                .iter()
                .any(|p| sector >= p.first && sector <= p.last)
    }

    /// gptfdisk's `ComputeAlignment`.
    fn compute_alignment(&mut self) {
        let mut align = 2048 * 512 / self.bounds.sector_size;
        let mut exponent = align.max(1).ilog2();
        // sgdisk walks its slots in number order.
        let mut parts = self.parts.clone();
        parts.sort_by_key(|p| p.number);
        for p in &parts {
            loop {
                align = 1 << exponent;
                if p.first % align == 0 {
                    break;
                }
                exponent -= 1;
            }
        }
        if align < 8 && self.bounds.sectors >= 585_937_500 {
            align = 8;
        }
        self.alignment = align;
    }

    /// gptfdisk's `Align`: move to the earlier multiple if everything in between is free, else
    /// to the later one if that is free back to the sector. Returns whether it moved.
    fn align(&self, sector: &mut u64) -> bool {
        let a = self.alignment;
        if sector.is_multiple_of(a) {
            return false;
        }
        let earlier = *sector / a * a;
        let later = earlier + a;
        if earlier >= self.bounds.first_usable && (earlier..*sector).all(|s| self.is_free(s)) {
            *sector = earlier;
            return true;
        }
        if later <= self.bounds.last_usable && (*sector + 1..=later).all(|s| self.is_free(s)) {
            *sector = later;
            return true;
        }
        false
    }

    fn first_available(&self, start: u64) -> u64 {
        let mut first = start.max(self.bounds.first_usable);
        loop {
            let mut moved = false;
            for p in &self.parts {
                if first >= p.first && first <= p.last {
                    first = p.last + 1;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        if first > self.bounds.last_usable {
            0
        } else {
            first
        }
    }

    fn last_in_free(&self, start: u64, align_end: bool) -> u64 {
        let mut nearest_end = self.bounds.last_usable;
        for p in &self.parts {
            if nearest_end > p.first && p.first > start {
                nearest_end = p.first - 1;
            }
        }
        if align_end {
            let mut end_plus = nearest_end + 1;
            if self.align(&mut end_plus) && self.is_free(end_plus - 1) && end_plus > start {
                nearest_end = end_plus - 1;
            }
        }
        nearest_end
    }

    fn first_in_largest(&self) -> u64 {
        let (mut start, mut selected_size, mut selected) = (0, 0, 0);
        loop {
            let first = self.first_available(start);
            if first == 0 {
                return selected;
            }
            let last = self.last_in_free(first, false);
            let size = last - first + 1;
            if size > selected_size {
                selected_size = size;
                selected = first;
            }
            start = last + 1;
        }
    }
}

/// gptfdisk's `IeeeToInt`, limited to what disko can pass (and rejecting what sgdisk would
/// silently turn into sector 0). `None` for text sgdisk does not read as a position.
fn ieee_to_int(
    text: &str,
    sector_size: u64,
    low: u64,
    high: u64,
    align: u64,
    def: u64,
) -> Option<u64> {
    let text = text.trim_start_matches(' ');
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (Some('+'), &text[1..]),
        Some(b'-') => (Some('-'), &text[1..]),
        _ => (None, text),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let mut value: u64 = rest[..digits].parse().ok()?;
    let suffix = &rest[digits..];
    let unit = match suffix.as_bytes().first().map(u8::to_ascii_uppercase) {
        None => None,
        Some(b'S') if suffix.len() == 1 => None,
        Some(c) => {
            let power = b"KMGTPE".iter().position(|&u| u == c)?;
            // sgdisk reads one suffix character; accept the spellings people write after it.
            if !matches!(&suffix[1..], "" | "B" | "iB" | "IB" | "b" | "ib") {
                return None;
            }
            Some(1u64 << (10 * (power + 1)))
        }
    };
    if value == 0 {
        return Some(def);
    }
    if let Some(bytes_per_unit) = unit {
        if bytes_per_unit >= sector_size {
            value = value.checked_mul(bytes_per_unit / sector_size)?;
        } else {
            value /= sector_size / bytes_per_unit;
        }
    }
    match sign {
        Some('+') => {
            if high.wrapping_sub(def) < align {
                low.checked_add(value - 1)
            } else {
                def.checked_add(value)
            }
        }
        Some('-') => high.checked_sub(value),
        _ => Some(value),
    }
}

/// Lays `partitions` (in creation order) onto a disk that already holds `existing`, the way
/// disko's sgdisk lines do. A partition whose number already exists keeps its place (disko then
/// only renames and retypes it). Returns every partition on the disk afterwards, by number.
pub fn resolve(
    partitions: &[GptPartition],
    bounds: GptBounds,
    existing: &[Extent],
) -> Result<Vec<Extent>, TableError> {
    let mut seen = std::collections::BTreeSet::new();
    for p in partitions {
        if !seen.insert(p.number) {
            return Err(TableError::DuplicateNumber { number: p.number });
        }
        if p.number == 0 || p.number > 128 {
            return Err(TableError::NumberOutOfRange {
                number: p.number,
                max: 128,
            });
        }
    }
    let mut layout = Layout {
        bounds,
        parts: existing.to_vec(),
        alignment: 1,
    };
    for p in partitions {
        if layout.parts.iter().any(|e| e.number == p.number) {
            continue;
        }
        layout.compute_alignment();
        if p.alignment > 0 {
            layout.alignment = p.alignment;
        }
        let bad = |field: &'static str, value: &str| TableError::BadSgdiskValue {
            number: p.number,
            label: p.label.clone(),
            field,
            value: value.to_string(),
        };
        let mut low = layout.first_in_largest();
        if low == 0 {
            return Err(TableError::NoFreeSpace {
                number: p.number,
                label: p.label.clone(),
            });
        }
        layout.align(&mut low);
        let high = layout.last_in_free(low, true);
        let ss = bounds.sector_size;
        let a = layout.alignment;
        let mut start =
            ieee_to_int(&p.start, ss, low, high, a, low).ok_or_else(|| bad("start", &p.start))?;
        let end =
            ieee_to_int(&p.end, ss, start, high, a, high).ok_or_else(|| bad("end", &p.end))?;
        layout.align(&mut start);
        if !(layout.is_free(start) && start <= end && layout.last_in_free(start, false) >= end) {
            return Err(TableError::DoesNotFit {
                number: p.number,
                label: p.label.clone(),
                start,
                end,
                first_usable: bounds.first_usable,
                last_usable: bounds.last_usable,
            });
        }
        layout.parts.push(Extent {
            number: p.number,
            first: start,
            last: end,
        });
    }
    layout.parts.sort_by_key(|e| e.number);
    Ok(layout.parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, start: &str, end: &str) -> GptPartition {
        GptPartition {
            number,
            label: format!("p{number}"),
            type_code: "8300".into(),
            start: start.into(),
            end: end.into(),
            alignment: 0,
            guid: None,
            attributes: vec![],
        }
    }

    fn lay(parts: &[GptPartition], sectors: u64, ss: u64) -> Vec<(u64, u64)> {
        resolve(parts, GptBounds::new_table(sectors, ss), &[])
            .unwrap()
            .iter()
            .map(|e| (e.first, e.last))
            .collect()
    }

    #[test]
    fn disko_defaults_on_two_gib() {
        // simple-efi: ESP +500M, root -0, on a 2 GiB disk (4 194 304 sectors).
        let got = lay(&[part(1, "0", "+500M"), part(2, "0", "-0")], 4_194_304, 512);
        assert_eq!(got, vec![(2048, 1_026_047), (1_026_048, 4_192_255)]);
    }

    #[test]
    fn zero_size_fills_and_minus_leaves_room() {
        // swap.nix's shape: +512M, then -1G (size "0" with end "-1G"), then +0 to the end.
        let got = lay(
            &[
                part(1, "0", "+512M"),
                part(2, "0", "-1G"),
                part(3, "0", "+0"),
            ],
            4_194_304,
            512,
        );
        assert_eq!(got[0], (2048, 1_050_623));
        assert_eq!(got[1], (1_050_624, 4_192_255 - 2_097_152));
        assert_eq!(got[2], (4_192_255 - 2_097_152 + 1, 4_192_255));
    }

    #[test]
    fn four_k_sectors_scale_the_alignment() {
        let got = lay(&[part(1, "0", "+1M"), part(2, "0", "-0")], 524_288, 4096);
        assert_eq!(got, vec![(256, 511), (512, 524_287 - 256 + 1 - 1)]);
    }

    #[test]
    fn bad_values_and_overfull_disks_name_the_partition() {
        let e = resolve(&[part(1, "0", "+5Q")], GptBounds::new_table(4096, 512), &[]).unwrap_err();
        assert!(e.to_string().contains("partition 1 (p1)"), "{e}");
        let e = resolve(
            &[part(1, "0", "+10M")],
            GptBounds::new_table(4096, 512),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, TableError::DoesNotFit { number: 1, .. }), "{e}");
        let e = resolve(
            &[part(1, "0", "+1M"), part(1, "0", "-0")],
            GptBounds::new_table(1 << 20, 512),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(e, TableError::DuplicateNumber { number: 1 }),
            "{e}"
        );
    }
}
