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
    #[cfg(test)]
    pub(crate) fn first(&self) -> Option<u128> {
        self.ranges.keys().next().copied()
    }

    /// Removes and returns the smallest member at or after `value`: the
    /// allocation hot path, so it touches the map as few times as it can.
    pub(crate) fn take_first_at_or_after(&mut self, value: u128) -> Option<u128> {
        let (start, end) = match self.range_containing(value) {
            Some(range) => range,
            None => self
                .ranges
                .range((Bound::Excluded(value), Bound::Unbounded))
                .next()
                .map(|(&s, &e)| (s, e))?,
        };
        let taken = value.max(start);
        if taken == start {
            self.ranges.remove(&start);
        } else {
            // start < taken: shorten the range in place.
            self.ranges.insert(start, taken - 1);
        }
        if taken < end {
            self.ranges.insert(taken + 1, end);
        }
        Some(taken)
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
    fn take_removes_the_first_member_at_or_after_a_value() {
        fn check(initial: &[Span], value: u128, expect: Option<u128>, left: &[Span]) {
            let mut s = set(initial);
            assert_eq!(
                s.take_first_at_or_after(value),
                expect,
                "{initial:?} from {value}"
            );
            assert_eq!(pairs(&s), left, "{initial:?} from {value}");
        }
        check(&[(0, 10)], 0, Some(0), &[(1, 10)]);
        check(&[(0, 10)], 4, Some(4), &[(0, 3), (5, 10)]);
        check(&[(0, 10)], 10, Some(10), &[(0, 9)]);
        check(&[(0, 10)], 11, None, &[(0, 10)]);
        check(&[(3, 3), (7, 9)], 4, Some(7), &[(3, 3), (8, 9)]);
        check(&[(3, 3), (7, 9)], 0, Some(3), &[(7, 9)]);
        check(
            &[(5, u128::MAX)],
            u128::MAX,
            Some(u128::MAX),
            &[(5, u128::MAX - 1)],
        );
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
                let mut taken = s.clone();
                let first = model.range(v..).next().copied();
                prop_assert_eq!(taken.take_first_at_or_after(v), first);
                let mut rest = model.clone();
                if let Some(f) = first { rest.remove(&f); }
                prop_assert_eq!(taken.count(), rest.len() as u128);
                prop_assert_eq!(taken.first(), rest.first().copied());
                let p = pairs(&taken);
                for w in p.windows(2) { prop_assert!(w[0].1 + 1 < w[1].0); }
            }
        }
    }
}
