//! A hierarchical timing wheel with intrusive nodes (Varghese & Lauck, in the
//! style of tokio's `runtime/time/wheel` and nginx's embedded timers).
//!
//! # Design
//!
//! * Time is measured in ticks; 1 tick = 1 ms. The wheel never reads a clock:
//!   every operation that needs the time takes it as `now` from the caller.
//! * There are [`LEVELS`] = 6 levels of 64 slots each. A slot on level `L`
//!   spans `64^L` ticks, so a whole level spans `64^(L+1)` ticks and the top
//!   level spans `2^36` ticks (about 795 days).
//! * Each slot is a doubly linked list threaded through [`TimerNode`]s that
//!   live inside the caller's own entries (e.g. a connection slot); the wheel
//!   only stores one `u32` head per slot. Lists are push-front, and each node
//!   records which slot it sits in, so unlinking is O(1).
//! * Each level keeps an `occupied` bitmap (bit `s` set iff slot `s` is
//!   non-empty). The next non-empty slot at or after the current position is
//!   found in O(1) with `rotate_right` + `trailing_zeros`.
//! * The wheel's current time is `elapsed`. An entry due at `when` is placed on
//!   the level given by the most significant bit in which `elapsed` and `when`
//!   differ, divided by 6 (bits 0..6 -> level 0, 6..12 -> level 1, ...), i.e.
//!   the lowest level whose current "lap" contains `when`, in slot
//!   `(when >> 6*L) & 63`.
//! * When time reaches the start of a slot on level `L > 0`, the slot is
//!   emptied and its entries are re-inserted relative to the new time
//!   ("cascading"); they land on strictly lower levels, and eventually on
//!   level 0, whose slots are exactly one tick wide. Entries are popped from a
//!   level-0 slot when time reaches it.
//! * Deadlines more than `63 * 2^30` ticks ahead are clamped into the last
//!   top-level slot before the current one (cyclically) and re-cascaded, as
//!   often as necessary, until they are due.
//! * An entry armed with `when <= elapsed` (already due) goes into the level-0
//!   slot of `elapsed` (the "due slot") and is returned by the next `poll`.
//! * `poll` advances by jumping straight to the next occupied slot (found via
//!   the bitmaps), never tick by tick, so `now` may leap arbitrarily far.
//!   A `now` lower than the wheel's time is treated as "no advance".
//! * Times are clamped to [`MAX_TIME`] = `2^48 - 1` ticks (about 8900 years),
//!   the range of the 48-bit deadline stored in a node.
//!
//! # Invariants
//!
//! * A node is armed iff its slot index is non-zero; it is then linked into
//!   exactly that slot's list, and `len` counts armed nodes.
//! * A slot's `occupied` bit is set iff its head is not [`NIL`]; a head's
//!   `prev` is [`NIL`]; for linked nodes `a.next == b` iff `b.prev == a`.
//! * Every entry on level `L > 0` has a placement time `t` (its deadline, or
//!   the clamp of it) with `t <= when`, `t` in the same `64^(L+1)`-tick lap as
//!   `elapsed` (or, on the top level, at most 63 slots ahead cyclically) but
//!   not in the same `64^L`-tick slot. Hence every level-`L` slot starts after
//!   `elapsed`, and all level-`L` slots start before all level-`L+1` slots: the
//!   first occupied slot of the lowest non-empty level is the next thing to do.
//! * Every entry on level 0 sits in the slot of its exact deadline, except in
//!   the due slot, which may also hold entries whose deadline already passed.
//!   When `elapsed` moves forward the due slot is empty.
//!
//! # Costs
//!
//! * `insert`, `cancel`: O(1).
//! * `next_deadline`: O(levels).
//! * `poll`: amortised O(1) per expired entry, plus O(1) per cascade of an
//!   entry (at most `LEVELS - 1` cascades per entry, more only for deadlines
//!   beyond the top level's range), plus O(levels) per occupied slot passed.
//! * Memory: 16 bytes per entry (the embedded [`TimerNode`]) and about 1.6 KiB
//!   for the wheel itself. No allocation ever (not even at construction).

use std::fmt;

/// "No entry": the null link.
pub const NIL: u32 = u32::MAX;

/// Number of levels.
pub const LEVELS: usize = 6;

/// Largest representable time (ticks). Larger times are clamped to this.
pub const MAX_TIME: u64 = (1 << DEADLINE_BITS) - 1;

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const DEADLINE_BITS: u32 = 48;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
/// Ticks spanned by one slot of the top level.
const TOP_SLOT_RANGE: u64 = 1 << (SLOT_BITS * (LEVELS as u32 - 1));
/// Ticks spanned by the whole top level.
const TOP_LEVEL_RANGE: u64 = 1 << (SLOT_BITS * LEVELS as u32);
/// Furthest placement ahead of `elapsed`: 63 top-level slots, so a clamped
/// entry never lands in the top-level slot that contains `elapsed`.
const MAX_AHEAD: u64 = TOP_LEVEL_RANGE - TOP_SLOT_RANGE;

/// Intrusive per-entry links, embedded in the caller's own struct (e.g. a
/// connection slot).
///
/// Layout: `prev`/`next` keys of the neighbours in the slot list, and one
/// `u64` packing the deadline (low 48 bits, ticks) with the index of the slot
/// it sits in (high 16 bits: `level * 64 + slot + 1`, 0 = not armed).
#[derive(Clone, Copy, Debug)]
pub struct TimerNode {
    prev: u32,
    next: u32,
    word: u64,
}

const _: () = assert!(std::mem::size_of::<TimerNode>() == 16);

impl TimerNode {
    /// An unarmed node.
    pub const fn new() -> Self {
        TimerNode {
            prev: NIL,
            next: NIL,
            word: 0,
        }
    }

    /// Whether the node is linked into a wheel.
    pub fn is_armed(&self) -> bool {
        self.slot_index().is_some()
    }

    /// `Some(when)` if armed (clamped to [`MAX_TIME`]), else `None`.
    pub fn deadline(&self) -> Option<u64> {
        self.slot_index().map(|_| self.word & DEADLINE_MASK)
    }

    /// `level * 64 + slot` if armed.
    fn slot_index(&self) -> Option<usize> {
        match self.word >> DEADLINE_BITS {
            0 => None,
            i => Some(i as usize - 1),
        }
    }

    fn when(&self) -> u64 {
        self.word & DEADLINE_MASK
    }
}

impl Default for TimerNode {
    fn default() -> Self {
        Self::new()
    }
}

/// Gives the wheel access to the node of entry `key`.
///
/// Implemented by the server for its connection slab (`&mut slab[key].timer`)
/// and in tests for a `Vec<TimerNode>`. The wheel only calls `node` with keys
/// it was given by `insert` (or found in its lists), and the mapping must be
/// stable while the key is armed.
pub trait TimerSlots {
    fn node(&mut self, key: u32) -> &mut TimerNode;
}

#[derive(Clone, Debug)]
struct Level {
    /// Bit `s` set iff `heads[s] != NIL`.
    occupied: u64,
    heads: [u32; SLOTS],
}

impl Level {
    const EMPTY: Level = Level {
        occupied: 0,
        heads: [NIL; SLOTS],
    };
}

/// The next slot to process: its level, slot number and start tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expiration {
    level: usize,
    slot: usize,
    deadline: u64,
}

/// A hierarchical timing wheel. See the module documentation.
#[derive(Clone)]
pub struct Wheel {
    levels: [Level; LEVELS],
    /// The wheel's current time; only moves forward.
    elapsed: u64,
    /// Lower bound on the deadlines of overdue entries (armed with a deadline
    /// before `elapsed`) in the due slot; `u64::MAX` if none since `elapsed`
    /// last moved or the due slot last emptied. Lets `next_deadline` report a
    /// time no later than theirs.
    overdue_floor: u64,
    /// Number of armed entries.
    len: usize,
}

impl fmt::Debug for Wheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let occupied: [u64; LEVELS] = std::array::from_fn(|i| self.levels[i].occupied);
        f.debug_struct("Wheel")
            .field("elapsed", &self.elapsed)
            .field("len", &self.len)
            .field("occupied", &occupied)
            .finish()
    }
}

/// Level on which an entry placed at `t` goes, given the current time.
fn level_for(elapsed: u64, t: u64) -> usize {
    // OR in the slot mask so that level 0 is the minimum.
    let masked = (elapsed ^ t) | SLOT_MASK;
    let significant = 63 - masked.leading_zeros();
    ((significant / SLOT_BITS) as usize).min(LEVELS - 1)
}

/// Ticks spanned by one slot of `level`.
fn slot_range(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * level)
}

/// Ticks spanned by all of `level`.
fn level_range(level: usize) -> u64 {
    1 << (SLOT_BITS as usize * (level + 1))
}

impl Wheel {
    /// An empty wheel whose current time is `now`.
    pub fn new(now: u64) -> Self {
        Wheel {
            levels: [Level::EMPTY; LEVELS],
            elapsed: now.min(MAX_TIME),
            overdue_floor: u64::MAX,
            len: 0,
        }
    }

    /// Arms `key` to fire at tick `when`. If already armed, it is moved
    /// (cancel + insert). A `when` <= the wheel's current time fires at the
    /// next `poll`. `when` is clamped to [`MAX_TIME`].
    pub fn insert<S: TimerSlots + ?Sized>(&mut self, slots: &mut S, key: u32, when: u64) {
        debug_assert!(key != NIL, "insert: key {key} is NIL");
        if slots.node(key).is_armed() {
            self.cancel(slots, key);
        }
        let when = when.min(MAX_TIME);
        if when < self.elapsed {
            self.overdue_floor = self.overdue_floor.min(when);
        }
        self.place(slots, key, when);
        self.len += 1;
    }

    /// Disarms `key`; no-op if not armed. O(1).
    pub fn cancel<S: TimerSlots + ?Sized>(&mut self, slots: &mut S, key: u32) {
        let node = slots.node(key);
        let Some(index) = node.slot_index() else {
            return;
        };
        let (prev, next) = (node.prev, node.next);
        *node = TimerNode::new();
        let (level, slot) = (index / SLOTS, index % SLOTS);
        debug_assert!(
            level < LEVELS,
            "cancel: key {key} has bad slot index {index}"
        );
        if prev == NIL {
            debug_assert_eq!(
                self.levels[level].heads[slot], key,
                "cancel: key {key} has prev NIL but is not the head of level {level} slot {slot}"
            );
            self.levels[level].heads[slot] = next;
            if next == NIL {
                self.levels[level].occupied &= !(1 << slot);
                if level == 0 && slot as u64 == self.elapsed & SLOT_MASK {
                    self.overdue_floor = u64::MAX; // the due slot emptied
                }
            }
        } else {
            let p = slots.node(prev);
            debug_assert_eq!(
                p.next, key,
                "cancel: key {key}'s prev {prev} links elsewhere"
            );
            p.next = next;
        }
        if next != NIL {
            let n = slots.node(next);
            debug_assert_eq!(
                n.prev, key,
                "cancel: key {key}'s next {next} links elsewhere"
            );
            n.prev = prev;
        }
        debug_assert!(self.len > 0, "cancel: armed key {key} but len is 0");
        self.len -= 1;
    }

    /// Earliest tick at which `poll` could return something, or `None` if
    /// empty. It may be earlier than the true earliest deadline (when a
    /// higher-level slot only needs cascading), never later. O(levels).
    pub fn next_deadline(&self) -> Option<u64> {
        let exp = self.next_expiration()?;
        if exp.level == 0 && exp.deadline == self.elapsed {
            // The due slot may hold overdue entries.
            Some(exp.deadline.min(self.overdue_floor))
        } else {
            Some(exp.deadline)
        }
    }

    /// Advances the wheel to `now` and pops ONE entry whose deadline is
    /// <= now (disarming it), or `None` when nothing more is due. Callers loop:
    /// `while let Some(k) = w.poll(&mut s, now) { .. }`.
    ///
    /// Entries in higher-level slots are cascaded down as time reaches them;
    /// an entry never fires before its deadline, and fires at the first poll
    /// with `now >= deadline`. A `now` before the wheel's current time is
    /// treated as no advance.
    pub fn poll<S: TimerSlots + ?Sized>(&mut self, slots: &mut S, now: u64) -> Option<u32> {
        let now = now.clamp(self.elapsed, MAX_TIME.max(self.elapsed));
        loop {
            let exp = match self.next_expiration() {
                Some(exp) if exp.deadline <= now => exp,
                _ => {
                    self.set_elapsed(now);
                    return None;
                }
            };
            self.set_elapsed(exp.deadline);
            if exp.level == 0 {
                return Some(self.pop_front(slots, exp.slot, now));
            }
            self.cascade(slots, exp);
        }
    }

    /// Number of armed entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn set_elapsed(&mut self, when: u64) {
        debug_assert!(
            when >= self.elapsed,
            "time went backwards: elapsed {} -> {when}",
            self.elapsed
        );
        if when > self.elapsed {
            debug_assert!(
                self.levels[0].occupied & (1 << (self.elapsed & SLOT_MASK)) == 0,
                "advancing from {} to {when} with a non-empty due slot",
                self.elapsed
            );
            self.elapsed = when;
            self.overdue_floor = u64::MAX;
        }
    }

    /// Links `key` (unarmed) into the slot for deadline `when` relative to
    /// `elapsed`.
    fn place<S: TimerSlots + ?Sized>(&mut self, slots: &mut S, key: u32, when: u64) {
        let t = when.clamp(self.elapsed, self.elapsed + MAX_AHEAD);
        let level = level_for(self.elapsed, t);
        let slot = ((t >> (SLOT_BITS as usize * level)) & SLOT_MASK) as usize;
        let head = self.levels[level].heads[slot];
        let index = (level * SLOTS + slot) as u64 + 1;
        *slots.node(key) = TimerNode {
            prev: NIL,
            next: head,
            word: when | (index << DEADLINE_BITS),
        };
        if head != NIL {
            let h = slots.node(head);
            debug_assert_eq!(
                h.prev, NIL,
                "head {head} of level {level} slot {slot} has prev {}",
                h.prev
            );
            h.prev = key;
        }
        self.levels[level].heads[slot] = key;
        self.levels[level].occupied |= 1 << slot;
    }

    /// Unlinks and returns the head of level-0 slot `slot`, which is due.
    fn pop_front<S: TimerSlots + ?Sized>(&mut self, slots: &mut S, slot: usize, now: u64) -> u32 {
        let key = self.levels[0].heads[slot];
        debug_assert!(key != NIL, "level 0 slot {slot} marked occupied but empty");
        let node = slots.node(key);
        debug_assert_eq!(
            node.prev, NIL,
            "head {key} of level 0 slot {slot} has a prev"
        );
        debug_assert_eq!(
            node.slot_index(),
            Some(slot),
            "key {key} in level 0 slot {slot} records another slot"
        );
        debug_assert!(
            node.when() <= now,
            "key {key} popped at {now} before its deadline {}",
            node.when()
        );
        let next = node.next;
        *node = TimerNode::new();
        self.levels[0].heads[slot] = next;
        if next == NIL {
            self.levels[0].occupied &= !(1 << slot);
            self.overdue_floor = u64::MAX; // the due slot emptied
        } else {
            slots.node(next).prev = NIL;
        }
        self.len -= 1;
        key
    }

    /// Empties the slot of `exp` (level > 0) and re-inserts its entries
    /// relative to `elapsed`, which has been set to the slot's start.
    fn cascade<S: TimerSlots + ?Sized>(&mut self, slots: &mut S, exp: Expiration) {
        debug_assert_eq!(exp.deadline, self.elapsed);
        let level = &mut self.levels[exp.level];
        let mut cur = level.heads[exp.slot];
        level.heads[exp.slot] = NIL;
        level.occupied &= !(1 << exp.slot);
        while cur != NIL {
            let node = *slots.node(cur);
            debug_assert_eq!(
                node.slot_index(),
                Some(exp.level * SLOTS + exp.slot),
                "key {cur} in level {} slot {} records another slot",
                exp.level,
                exp.slot
            );
            debug_assert!(
                node.when() >= exp.deadline,
                "key {cur} with deadline {} cascaded late, at {}",
                node.when(),
                exp.deadline
            );
            self.place(slots, cur, node.when());
            cur = node.next;
        }
    }

    /// The first occupied slot of the lowest non-empty level: the earliest
    /// slot that needs processing.
    fn next_expiration(&self) -> Option<Expiration> {
        for level in 0..LEVELS {
            if let Some(exp) = self.level_expiration(level) {
                debug_assert!(
                    (level + 1..LEVELS).all(|l| self
                        .level_expiration(l)
                        .is_none_or(|e| e.deadline > exp.deadline)),
                    "a level above {level} has a slot due before {exp:?}: {self:?}"
                );
                return Some(exp);
            }
        }
        None
    }

    /// The first occupied slot of `level` at or after the current position.
    fn level_expiration(&self, level: usize) -> Option<Expiration> {
        let occupied = self.levels[level].occupied;
        if occupied == 0 {
            return None;
        }
        let shift = SLOT_BITS as usize * level;
        let now_slot = ((self.elapsed >> shift) & SLOT_MASK) as u32;
        let slot = ((occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as u64
            & SLOT_MASK) as usize;
        let level_start = self.elapsed & !(level_range(level) - 1);
        let mut deadline = level_start + slot as u64 * slot_range(level);
        if level == LEVELS - 1 && deadline <= self.elapsed {
            // A clamped far entry placed in a slot cyclically ahead of
            // `elapsed`, i.e. in the top level's next lap.
            deadline += TOP_LEVEL_RANGE;
        }
        debug_assert!(
            deadline > self.elapsed || (level == 0 && deadline == self.elapsed),
            "level {level} slot {slot} starts at {deadline}, not after elapsed {}",
            self.elapsed
        );
        Some(Expiration {
            level,
            slot,
            deadline,
        })
    }

    /// Test helper: checks every structural invariant, in O(len + slots).
    #[cfg(test)]
    fn check<S: TimerSlots + ?Sized>(&self, slots: &mut S) {
        let mut count = 0;
        for (l, level) in self.levels.iter().enumerate() {
            for s in 0..SLOTS {
                let head = level.heads[s];
                assert_eq!(
                    level.occupied & (1 << s) != 0,
                    head != NIL,
                    "level {l} slot {s}: bitmap disagrees with head {head}"
                );
                let mut prev = NIL;
                let mut cur = head;
                while cur != NIL {
                    let n = *slots.node(cur);
                    assert_eq!(n.prev, prev, "key {cur}: bad prev");
                    assert_eq!(n.slot_index(), Some(l * SLOTS + s), "key {cur}: bad slot");
                    if l == 0 && s as u64 != self.elapsed & SLOT_MASK {
                        let start = self.elapsed & !SLOT_MASK;
                        assert_eq!(n.when(), start + s as u64, "key {cur}: wrong level 0 slot");
                    }
                    count += 1;
                    prev = cur;
                    cur = n.next;
                }
            }
        }
        assert_eq!(count, self.len, "len disagrees with the lists");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TimerSlots for Vec<TimerNode> {
        fn node(&mut self, key: u32) -> &mut TimerNode {
            &mut self[key as usize]
        }
    }

    fn slots(n: usize) -> Vec<TimerNode> {
        vec![TimerNode::new(); n]
    }

    /// Small xorshift64* so the tests need no rand crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn drain(w: &mut Wheel, s: &mut Vec<TimerNode>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(k) = w.poll(s, now) {
            assert!(!s[k as usize].is_armed());
            out.push(k);
        }
        out
    }

    const EVERY_LEVEL: [u64; 10] = [
        1,
        63,
        64,
        4095,
        4096,
        262_143,
        262_144,
        1 << 24,
        1 << 30,
        1 << 36,
    ];

    #[test]
    fn node_basics() {
        let n = TimerNode::default();
        assert!(!n.is_armed());
        assert_eq!(n.deadline(), None);
        assert_eq!(std::mem::size_of::<TimerNode>(), 16);
        let mut w = Wheel::new(0);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
        let mut s = slots(1);
        w.insert(&mut s, 0, 7);
        assert!(s[0].is_armed());
        assert_eq!(s[0].deadline(), Some(7));
        assert_eq!(w.len(), 1);
        w.cancel(&mut s, 0);
        assert!(!s[0].is_armed());
        assert!(w.is_empty());
        // Cancelling an unarmed entry is a no-op.
        w.cancel(&mut s, 0);
        assert!(w.is_empty());
        w.check(&mut s);
    }

    #[test]
    fn level0_insert_expire() {
        let mut w = Wheel::new(0);
        let mut s = slots(2);
        w.insert(&mut s, 0, 5);
        w.insert(&mut s, 1, 6);
        assert_eq!(w.next_deadline(), Some(5));
        assert_eq!(w.poll(&mut s, 4), None);
        assert_eq!(w.poll(&mut s, 5), Some(0));
        assert_eq!(w.poll(&mut s, 5), None);
        assert!(!s[0].is_armed());
        assert_eq!(w.next_deadline(), Some(6));
        assert_eq!(w.poll(&mut s, 6), Some(1));
        assert_eq!(w.poll(&mut s, 6), None);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    /// Each deadline on its own wheel: silent at when-1, fires at when.
    #[test]
    fn every_level_alone() {
        for base in [0, 12_345, (1 << 36) - 3, 987_654_321_987] {
            for d in EVERY_LEVEL {
                let when = base + d;
                let mut w = Wheel::new(base);
                let mut s = slots(1);
                w.insert(&mut s, 0, when);
                w.check(&mut s);
                let nd = w.next_deadline().unwrap();
                assert!(nd <= when, "base {base} d {d}: next {nd} > {when}");
                assert_eq!(w.poll(&mut s, when - 1), None, "base {base} d {d}: early");
                w.check(&mut s);
                assert!(s[0].is_armed());
                assert_eq!(w.next_deadline(), Some(when), "base {base} d {d}");
                assert_eq!(w.poll(&mut s, when), Some(0), "base {base} d {d}: late");
                assert_eq!(w.poll(&mut s, when), None);
                assert!(w.is_empty());
            }
        }
    }

    /// All deadlines on one wheel, polled only at when-1 and when.
    #[test]
    fn every_level_together() {
        for base in [0, 77, (1 << 30) - 1] {
            let mut w = Wheel::new(base);
            let mut s = slots(EVERY_LEVEL.len());
            for (k, d) in EVERY_LEVEL.iter().enumerate() {
                w.insert(&mut s, k as u32, base + d);
            }
            assert_eq!(w.len(), EVERY_LEVEL.len());
            for (k, d) in EVERY_LEVEL.iter().enumerate() {
                let when = base + d;
                assert_eq!(w.poll(&mut s, when - 1), None, "base {base} d {d}: early");
                w.check(&mut s);
                assert_eq!(w.poll(&mut s, when), Some(k as u32), "base {base} d {d}");
                assert_eq!(w.poll(&mut s, when), None);
            }
            assert!(w.is_empty());
        }
    }

    /// Sparse polls at increasing times: each entry fires at the first poll
    /// with now >= deadline.
    #[test]
    fn fires_at_first_poll_past_deadline() {
        let mut w = Wheel::new(0);
        let mut s = slots(EVERY_LEVEL.len());
        for (k, d) in EVERY_LEVEL.iter().enumerate() {
            w.insert(&mut s, k as u32, *d);
        }
        let mut now = 0u64;
        let mut fired = 0;
        while !w.is_empty() {
            let prev = now;
            now = now * 3 / 2 + 1;
            for k in drain(&mut w, &mut s, now) {
                let d = EVERY_LEVEL[k as usize];
                assert!(prev < d && d <= now, "key {k} deadline {d} fired at {now}");
                fired += 1;
            }
            w.check(&mut s);
        }
        assert_eq!(fired, EVERY_LEVEL.len());
    }

    fn cancel_one_of_three(victim: u32) {
        let mut w = Wheel::new(0);
        let mut s = slots(3);
        // Push-front: the list is 2 (head), 1 (middle), 0 (tail).
        for k in 0..3 {
            w.insert(&mut s, k, 10);
        }
        w.check(&mut s);
        w.cancel(&mut s, victim);
        w.check(&mut s);
        assert_eq!(w.len(), 2);
        assert!(!s[victim as usize].is_armed());
        let mut got = drain(&mut w, &mut s, 10);
        got.sort_unstable();
        let want: Vec<u32> = (0..3).filter(|&k| k != victim).collect();
        assert_eq!(got, want);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_middle() {
        cancel_one_of_three(1);
    }

    #[test]
    fn cancel_head() {
        cancel_one_of_three(2);
    }

    #[test]
    fn cancel_tail() {
        cancel_one_of_three(0);
    }

    #[test]
    fn cancel_after_cascade() {
        let mut w = Wheel::new(0);
        let mut s = slots(3);
        w.insert(&mut s, 0, 5000); // level 2
        w.insert(&mut s, 1, 5001);
        w.insert(&mut s, 2, 300_000); // level 3
        let before = s[0].slot_index().unwrap();
        assert_eq!(before / SLOTS, 2);
        assert_eq!(w.poll(&mut s, 4096), None); // cascades level-2 slot 1
        let after = s[0].slot_index().unwrap();
        assert!(after / SLOTS < 2, "not cascaded: {after}");
        w.cancel(&mut s, 0);
        w.check(&mut s);
        assert_eq!(w.poll(&mut s, 5000), None);
        assert_eq!(w.poll(&mut s, 5001), Some(1));
        // Cascade the far one down to level 0, then cancel it.
        assert_eq!(w.poll(&mut s, 299_999), None);
        assert_eq!(s[2].slot_index().unwrap() / SLOTS, 0);
        w.cancel(&mut s, 2);
        w.check(&mut s);
        assert!(w.is_empty());
        assert_eq!(w.poll(&mut s, 1 << 40), None);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn reinsert_moves() {
        let mut w = Wheel::new(0);
        let mut s = slots(2);
        w.insert(&mut s, 0, 100);
        w.insert(&mut s, 1, 100);
        w.insert(&mut s, 0, 50); // earlier
        assert_eq!(w.len(), 2);
        w.check(&mut s);
        assert_eq!(s[0].deadline(), Some(50));
        assert_eq!(w.poll(&mut s, 49), None);
        assert_eq!(w.poll(&mut s, 50), Some(0));
        assert_eq!(w.poll(&mut s, 50), None);
        w.insert(&mut s, 1, 10_000); // later, out of a level-0 slot
        assert_eq!(w.poll(&mut s, 100), None);
        w.insert(&mut s, 1, 9_000); // earlier again, after no cascade
        assert_eq!(w.poll(&mut s, 8_192), None); // cascades it
        w.insert(&mut s, 1, 9_500); // move after cascade
        w.insert(&mut s, 1, 9_500); // same deadline: still one entry
        assert_eq!(w.len(), 1);
        w.check(&mut s);
        assert_eq!(w.poll(&mut s, 9_499), None);
        assert_eq!(w.poll(&mut s, 9_500), Some(1));
        assert_eq!(drain(&mut w, &mut s, 20_000), Vec::<u32>::new());
        assert!(w.is_empty());
    }

    #[test]
    fn due_insert_fires_on_next_poll() {
        let mut w = Wheel::new(1000);
        let mut s = slots(4);
        w.insert(&mut s, 0, 1000); // == now
        w.insert(&mut s, 1, 3); // in the past
        w.insert(&mut s, 2, 0);
        w.insert(&mut s, 3, 1001);
        assert_eq!(w.next_deadline(), Some(0));
        w.check(&mut s);
        let mut got = drain(&mut w, &mut s, 1000);
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(w.next_deadline(), Some(1001));
        // Moving an entry into the past also fires it at the next poll, even
        // one whose `now` went backwards.
        w.insert(&mut s, 3, 400);
        assert_eq!(w.next_deadline(), Some(400));
        assert_eq!(w.poll(&mut s, 10), Some(3));
        assert_eq!(w.poll(&mut s, 10), None);
        assert!(w.is_empty());
    }

    #[test]
    fn now_backwards_is_no_advance() {
        let mut w = Wheel::new(0);
        let mut s = slots(1);
        w.insert(&mut s, 0, 100);
        assert_eq!(w.poll(&mut s, 60), None);
        assert_eq!(w.poll(&mut s, 10), None);
        assert_eq!(w.poll(&mut s, 0), None);
        assert_eq!(w.poll(&mut s, 99), None);
        assert_eq!(w.poll(&mut s, 100), Some(0));
        w.insert(&mut s, 0, 101);
        assert_eq!(w.poll(&mut s, 5), None);
        assert_eq!(w.poll(&mut s, 101), Some(0));
    }

    #[test]
    fn long_jumps() {
        let mut w = Wheel::new(0);
        let mut s = slots(2);
        // An empty wheel jumps for free.
        assert_eq!(w.poll(&mut s, 1 << 40), None);
        let base = 1u64 << 40;
        w.insert(&mut s, 0, base + 5);
        // Far beyond the top level's range: re-cascaded until due.
        w.insert(&mut s, 1, base + (1 << 42) + 12_345);
        assert_eq!(w.poll(&mut s, base + 4), None);
        assert_eq!(w.poll(&mut s, base + 5), Some(0));
        let far = base + (1 << 42) + 12_345;
        assert!(w.next_deadline().unwrap() <= far);
        assert_eq!(w.poll(&mut s, far - 1), None);
        w.check(&mut s);
        assert_eq!(w.poll(&mut s, far), Some(1));
        // Times beyond MAX_TIME are clamped.
        w.insert(&mut s, 0, u64::MAX);
        assert_eq!(s[0].deadline(), Some(MAX_TIME));
        assert_eq!(w.poll(&mut s, MAX_TIME - 1), None);
        assert_eq!(w.poll(&mut s, u64::MAX), Some(0));
        assert_eq!(w.poll(&mut s, u64::MAX), None);
        assert!(w.is_empty());
    }

    #[test]
    fn dyn_slots() {
        let mut w = Wheel::new(0);
        let mut v = slots(1);
        let s: &mut dyn TimerSlots = &mut v;
        w.insert(s, 0, 3);
        assert_eq!(w.poll(s, 3), Some(0));
    }

    fn random_deadlines(n: usize, seed: u64, base: u64, span: u64) -> Vec<u64> {
        let mut rng = XorShift(seed);
        (0..n).map(|_| base + 1 + rng.next() % span).collect()
    }

    const N: usize = 100_000;

    /// Tick-by-tick: every entry fires exactly once, exactly at its deadline,
    /// hence in nondecreasing deadline order.
    #[test]
    fn many_tick_by_tick() {
        let base = 1_000_003;
        let span = 300_000;
        let whens = random_deadlines(N, 0x9e37_79b9_7f4a_7c15, base, span);
        let mut w = Wheel::new(base);
        let mut s = slots(N);
        for (k, &when) in whens.iter().enumerate() {
            w.insert(&mut s, k as u32, when);
        }
        w.check(&mut s);
        // Cancel and re-arm a tenth of them, to exercise the lists.
        for k in (0..N).step_by(10) {
            w.cancel(&mut s, k as u32);
        }
        assert_eq!(w.len(), N - N / 10);
        for k in (0..N).step_by(10) {
            w.insert(&mut s, k as u32, whens[k]);
        }
        assert_eq!(w.len(), N);
        w.check(&mut s);
        let mut fired = vec![false; N];
        let mut count = 0;
        let mut last = 0;
        for now in base..=base + span + 1 {
            while let Some(k) = w.poll(&mut s, now) {
                let k = k as usize;
                assert!(!fired[k], "key {k} fired twice");
                fired[k] = true;
                assert_eq!(whens[k], now, "key {k} fired at {now}");
                assert!(whens[k] >= last);
                last = whens[k];
                count += 1;
            }
            if now % 50_000 == 0 {
                w.check(&mut s);
            }
        }
        assert_eq!(count, N);
        assert!(w.is_empty());
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    /// One jump to the end: every entry fires exactly once, still in
    /// nondecreasing deadline order; deadlines span all levels and beyond.
    #[test]
    fn many_one_jump() {
        for (seed, span) in [(1u64, 300_000u64), (2, 1 << 38), (3, 1 << 44)] {
            let base = 5;
            let whens = random_deadlines(N, seed, base, span);
            let mut w = Wheel::new(base);
            let mut s = slots(N);
            for (k, &when) in whens.iter().enumerate() {
                w.insert(&mut s, k as u32, when);
            }
            w.check(&mut s);
            let end = *whens.iter().max().unwrap();
            let got = drain(&mut w, &mut s, end);
            assert_eq!(got.len(), N);
            let mut seen = vec![false; N];
            for pair in got.windows(2) {
                let (a, b) = (whens[pair[0] as usize], whens[pair[1] as usize]);
                assert!(a <= b, "seed {seed}: {a} fired before {b}");
            }
            for &k in &got {
                assert!(!std::mem::replace(&mut seen[k as usize], true));
            }
            assert!(w.is_empty());
            assert_eq!(w.next_deadline(), None);
            w.check(&mut s);
        }
    }

    /// Advancing to next_deadline repeatedly: it is never later than the true
    /// earliest deadline, and whatever fires there is due exactly then.
    #[test]
    fn next_deadline_never_late() {
        for (seed, span) in [(11u64, 100_000u64), (12, 1 << 32), (13, 1 << 40)] {
            let base = 42;
            let n = 20_000;
            let whens = random_deadlines(n, seed, base, span);
            let mut sorted = whens.clone();
            sorted.sort_unstable();
            let mut w = Wheel::new(base);
            let mut s = slots(n);
            for (k, &when) in whens.iter().enumerate() {
                w.insert(&mut s, k as u32, when);
            }
            let mut fired = 0;
            let mut steps = 0;
            while let Some(next) = w.next_deadline() {
                assert!(
                    next <= sorted[fired],
                    "next {next} > earliest {}",
                    sorted[fired]
                );
                for k in drain(&mut w, &mut s, next) {
                    assert_eq!(whens[k as usize], next, "key {k} fired at {next}");
                    assert_eq!(sorted[fired], next);
                    fired += 1;
                }
                steps += 1;
            }
            assert_eq!(fired, n);
            assert!(w.is_empty());
            assert!(steps < 8 * n, "seed {seed}: {steps} steps");
        }
    }
}
