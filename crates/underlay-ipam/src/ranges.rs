//! A set of `u128` values stored as disjoint inclusive ranges.
//!
//! The allocators keep their *free* slots here, so memory and search cost
//! follow the number of gaps, not the size of the range: a fresh IPv6 /64 is
//! one entry, and finding the next free slot in a /16 that is 99% full is one
//! `BTreeMap` lookup instead of a scan over the used slots.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Disjoint, non-adjacent inclusive ranges keyed by their start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<u128, u128>,
}

impl RangeSet {
    /// The range holding `value`, as `(start, end)`.
    pub(crate) fn range_containing(&self, value: u128) -> Option<(u128, u128)> {
        let (&start, &end) = self.ranges.range(..=value).next_back()?;
        (end >= value).then_some((start, end))
    }

    pub(crate) fn contains(&self, value: u128) -> bool {
        self.range_containing(value).is_some()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The smallest member.
    pub(crate) fn first(&self) -> Option<u128> {
        self.ranges.keys().next().copied()
    }

    /// The smallest member at or after `value`.
    pub(crate) fn first_at_or_after(&self, value: u128) -> Option<u128> {
        if self.contains(value) {
            return Some(value);
        }
        self.ranges
            .range((Bound::Excluded(value), Bound::Unbounded))
            .next()
            .map(|(&start, _)| start)
    }

    /// The number of members, saturating at `u128::MAX`.
    pub(crate) fn count(&self) -> u128 {
        self.ranges.iter().fold(0u128, |n, (&s, &e)| {
            n.saturating_add(e - s).saturating_add(1)
        })
    }

    /// The number of ranges (a measure of fragmentation).
    #[cfg(test)]
    pub(crate) fn fragments(&self) -> usize {
        self.ranges.len()
    }

    /// Adds `start..=end`, merging with overlapping and adjacent ranges.
    pub(crate) fn insert(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        let (mut lo, mut hi) = (start, end);
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            // Overlapping or adjacent below: `e + 1 >= start`, without overflow.
            if e >= start.saturating_sub(1) {
                lo = s;
                hi = hi.max(e);
                self.ranges.remove(&s);
            }
        }
        loop {
            // Ranges starting inside `lo..=hi + 1` overlap or touch the new one.
            let next = match hi.checked_add(1) {
                Some(limit) => self.ranges.range(lo..=limit).next(),
                None => self.ranges.range(lo..).next(),
            };
            let Some((&s, &e)) = next else { break };
            hi = hi.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(lo, hi);
    }

    /// Removes `start..=end`, splitting ranges that stick out of it.
    pub(crate) fn remove(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        if let Some((&s, &e)) = self.ranges.range(..start).next_back()
            && e >= start
        {
            // s < start, so start - 1 cannot underflow.
            self.ranges.insert(s, start - 1);
            if e > end {
                // e > end, so end + 1 cannot overflow.
                self.ranges.insert(end + 1, e);
                return;
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            if e > end {
                self.ranges.insert(end + 1, e);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// An inclusive range `(start, end)`.
    type Span = (u128, u128);

    fn set(ranges: &[Span]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    fn pairs(s: &RangeSet) -> Vec<Span> {
        s.ranges.iter().map(|(&a, &b)| (a, b)).collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent_ranges() {
        let cases: &[(&[Span], &[Span])] = &[
            (&[(1, 3), (5, 7)], &[(1, 3), (5, 7)]),
            (&[(1, 3), (4, 7)], &[(1, 7)]),
            (&[(4, 7), (1, 3)], &[(1, 7)]),
            (&[(1, 3), (5, 7), (4, 4)], &[(1, 7)]),
            (&[(1, 3), (5, 7), (9, 9), (0, 20)], &[(0, 20)]),
            (&[(2, 2), (0, 0)], &[(0, 0), (2, 2)]),
            (
                &[(u128::MAX, u128::MAX), (0, u128::MAX - 1)],
                &[(0, u128::MAX)],
            ),
            (&[(0, u128::MAX), (5, 5)], &[(0, u128::MAX)]),
        ];
        for (inserts, expect) in cases {
            assert_eq!(pairs(&set(inserts)), *expect, "{inserts:?}");
        }
    }

    #[test]
    fn remove_splits_ranges() {
        let cases: &[(Span, Span, &[Span])] = &[
            ((0, 10), (3, 5), &[(0, 2), (6, 10)]),
            ((0, 10), (0, 10), &[]),
            ((0, 10), (0, 0), &[(1, 10)]),
            ((0, 10), (10, 10), &[(0, 9)]),
            ((0, 10), (11, 20), &[(0, 10)]),
            ((5, 10), (0, 7), &[(8, 10)]),
            (
                (0, u128::MAX),
                (u128::MAX, u128::MAX),
                &[(0, u128::MAX - 1)],
            ),
            ((0, u128::MAX), (0, 0), &[(1, u128::MAX)]),
        ];
        for &(initial, removed, expect) in cases {
            let mut s = set(&[initial]);
            s.remove(removed.0, removed.1);
            assert_eq!(pairs(&s), expect, "{initial:?} - {removed:?}");
        }
    }

    #[test]
    fn count_saturates_for_the_whole_space() {
        assert_eq!(set(&[(0, u128::MAX)]).count(), u128::MAX);
        assert_eq!(set(&[(0, 9), (20, 29)]).count(), 20);
    }

    proptest! {
        /// The range set behaves exactly like a set of integers.
        #[test]
        fn behaves_like_a_set_of_integers(
            ops in proptest::collection::vec((any::<bool>(), 0u128..64, 0u128..8), 0..60),
            probes in proptest::collection::vec(0u128..80, 0..20),
        ) {
            let mut model = BTreeSet::new();
            let mut s = RangeSet::default();
            for (add, start, len) in ops {
                let end = start + len;
                if add { s.insert(start, end); model.extend(start..=end); }
                else { s.remove(start, end); for v in start..=end { model.remove(&v); } }
                // Disjoint and non-adjacent, so the representation is canonical.
                let p = pairs(&s);
                for w in p.windows(2) { prop_assert!(w[0].1 + 1 < w[1].0); }
                prop_assert_eq!(s.count(), model.len() as u128);
                prop_assert_eq!(s.first(), model.first().copied());
                prop_assert_eq!(s.is_empty(), model.is_empty());
            }
            for v in probes {
                prop_assert_eq!(s.contains(v), model.contains(&v));
                prop_assert_eq!(s.first_at_or_after(v), model.range(v..).next().copied());
            }
        }
    }
}
