//! The round-robin slot pool both allocators are built on.
//!
//! A pool hands out integer slots from `first..=last`: node CIDR indexes for
//! the cluster allocator, address offsets for the pod allocator. It owns the
//! round-robin rule (search starts after the last slot handed out, so a slot
//! just released is reused only after every other free slot) and keeps free
//! and reserved slots as [`RangeSet`]s, so every operation costs a few
//! `BTreeMap` lookups however large or full the range is.

use crate::ranges::RangeSet;

/// Why a slot could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    Reserved,
    Used,
}

#[derive(Debug, Clone)]
pub(crate) struct Pool {
    first: u128,
    last: u128,
    free: RangeSet,
    reserved: RangeSet,
    used: u128,
    last_allocated: Option<u128>,
}

impl Pool {
    /// A pool of the slots `first..=last`, all free.
    pub(crate) fn new(first: u128, last: u128) -> Pool {
        debug_assert!(first <= last);
        let mut free = RangeSet::default();
        free.insert(first, last);
        Pool {
            first,
            last,
            free,
            reserved: RangeSet::default(),
            used: 0,
            last_allocated: None,
        }
    }

    pub(crate) fn contains(&self, slot: u128) -> bool {
        slot >= self.first && slot <= self.last
    }

    /// Slots that can be handed out at all (saturating for 2^128 slots).
    pub(crate) fn capacity(&self) -> u128 {
        (self.last - self.first)
            .saturating_add(1)
            .saturating_sub(self.reserved.count())
    }

    pub(crate) fn used(&self) -> u128 {
        self.used
    }

    pub(crate) fn is_used(&self, slot: u128) -> bool {
        self.contains(slot) && !self.free.contains(slot) && !self.reserved.contains(slot)
    }

    pub(crate) fn last_allocated(&self) -> Option<u128> {
        self.last_allocated
    }

    /// The next free slot after the last one handed out, wrapping around.
    pub(crate) fn allocate(&mut self) -> Option<u128> {
        let start = match self.last_allocated {
            Some(slot) if slot < self.last => slot + 1,
            _ => self.first,
        };
        let slot = self
            .free
            .take_first_at_or_after(start)
            .or_else(|| self.free.take_first_at_or_after(self.first))?;
        self.used += 1;
        self.last_allocated = Some(slot);
        Some(slot)
    }

    /// Takes back a slot from [`Pool::allocate`] as if that call had never
    /// happened, round-robin position included.
    pub(crate) fn undo_allocate(&mut self, slot: u128, previous_last: Option<u128>) {
        if self.release(slot) {
            self.last_allocated = previous_last;
        }
    }

    /// Marks a slot held by someone else (state recovery). The round-robin
    /// position moves past it when it lies beyond the current position, so
    /// after recovering a set of slots allocation continues after the
    /// highest one rather than reusing recently freed low slots.
    pub(crate) fn occupy(&mut self, slot: u128) -> Result<(), Taken> {
        debug_assert!(self.contains(slot));
        if self.reserved.contains(slot) {
            return Err(Taken::Reserved);
        }
        if !self.free.contains(slot) {
            return Err(Taken::Used);
        }
        self.free.remove(slot, slot);
        self.used += 1;
        self.last_allocated = Some(self.last_allocated.map_or(slot, |last| last.max(slot)));
        Ok(())
    }

    /// Frees a held slot; false when it was not held.
    pub(crate) fn release(&mut self, slot: u128) -> bool {
        if !self.is_used(slot) {
            return false;
        }
        self.free.insert(slot, slot);
        self.used -= 1;
        true
    }

    /// Sets the round-robin position: the next allocation searches from the
    /// slot after `slot`.
    pub(crate) fn resume_after(&mut self, slot: u128) {
        debug_assert!(self.contains(slot));
        self.last_allocated = Some(slot);
    }

    /// Puts the round-robin position back to a value read earlier from
    /// [`Pool::last_allocated`].
    pub(crate) fn set_last_allocated(&mut self, last_allocated: Option<u128>) {
        self.last_allocated = last_allocated.filter(|&slot| self.contains(slot));
    }

    /// Withdraws `start..=end` (clamped by the caller to the pool) from
    /// allocation for good. Fails with a held slot inside it and then
    /// changes nothing.
    pub(crate) fn reserve(&mut self, start: u128, end: u128) -> Result<(), u128> {
        debug_assert!(self.contains(start) && self.contains(end) && start <= end);
        if let Some(slot) = self.first_used_in(start, end) {
            return Err(slot);
        }
        self.free.remove(start, end);
        self.reserved.insert(start, end);
        Ok(())
    }

    /// The lowest held slot in `start..=end`. Free and reserved slots are
    /// disjoint ranges, so this hops over whole ranges, never single slots.
    fn first_used_in(&self, start: u128, end: u128) -> Option<u128> {
        let mut slot = start;
        loop {
            let skip_to = self
                .free
                .range_containing(slot)
                .or_else(|| self.reserved.range_containing(slot));
            match skip_to {
                None => return Some(slot),
                Some((_, range_end)) if range_end >= end => return None,
                Some((_, range_end)) => slot = range_end + 1,
            }
        }
    }

    /// Whether the free set is empty (nothing left to allocate).
    #[cfg(test)]
    pub(crate) fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn free_fragments(&self) -> usize {
        self.free.fragments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(pool: &mut Pool, n: usize) -> Vec<u128> {
        (0..n).map_while(|_| pool.allocate()).collect()
    }

    #[test]
    fn allocation_is_round_robin_after_the_last_slot_handed_out() {
        let mut pool = Pool::new(1, 6);
        assert_eq!(drain(&mut pool, 3), [1, 2, 3]);
        assert!(pool.release(2));
        // 2 was just released: it comes back only after 4, 5, 6.
        assert_eq!(drain(&mut pool, 4), [4, 5, 6, 2]);
        assert_eq!(pool.allocate(), None);
        assert!(pool.is_full());
        assert!(pool.release(5));
        assert!(pool.release(1));
        // The last slot handed out was 2, so the search starts at 3.
        assert_eq!(drain(&mut pool, 3), [5, 1]);
    }

    #[test]
    fn occupy_moves_the_position_only_forward() {
        let mut pool = Pool::new(0, 9);
        assert_eq!(pool.occupy(7), Ok(()));
        assert_eq!(pool.occupy(3), Ok(()));
        assert_eq!(pool.occupy(3), Err(Taken::Used));
        assert_eq!(drain(&mut pool, 3), [8, 9, 0]);
    }

    #[test]
    fn reserve_withdraws_slots_and_refuses_held_ones() {
        let mut pool = Pool::new(0, 9);
        assert_eq!(pool.occupy(5), Ok(()));
        assert_eq!(pool.reserve(2, 6), Err(5));
        assert_eq!(pool.capacity(), 10, "a failed reserve changes nothing");
        assert!(pool.release(5));
        assert_eq!(pool.reserve(2, 6), Ok(()));
        assert_eq!(
            pool.reserve(4, 8),
            Ok(()),
            "reserving again overlapping is fine"
        );
        assert_eq!(pool.capacity(), 3);
        assert_eq!(pool.occupy(3), Err(Taken::Reserved));
        assert!(!pool.release(3), "a reserved slot is not held");
        assert_eq!(drain(&mut pool, 10), [9, 0, 1]);
    }

    #[test]
    fn undo_restores_the_round_robin_position() {
        let mut pool = Pool::new(0, 9);
        assert_eq!(pool.allocate(), Some(0));
        let before = pool.last_allocated();
        let slot = pool.allocate().unwrap();
        pool.undo_allocate(slot, before);
        assert_eq!(pool.used(), 1);
        assert_eq!(pool.allocate(), Some(1));
    }

    #[test]
    fn the_whole_u128_space_wraps_without_overflow() {
        let mut pool = Pool::new(0, u128::MAX);
        assert_eq!(pool.capacity(), u128::MAX);
        pool.resume_after(u128::MAX - 1);
        assert_eq!(drain(&mut pool, 3), [u128::MAX, 0, 1]);
        assert!(pool.release(u128::MAX));
        assert_eq!(pool.reserve(u128::MAX - 5, u128::MAX), Ok(()));
        assert_eq!(pool.allocate(), Some(2));
    }

    #[test]
    fn a_nearly_full_pool_stays_a_handful_of_gaps_for_sequential_use() {
        let mut pool = Pool::new(1, 1 << 64);
        assert_eq!(drain(&mut pool, 10_000).len(), 10_000);
        assert_eq!(pool.free_fragments(), 1);
    }
}
