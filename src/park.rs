//! Per-worker lists of parked subscribers, one list per channel, linked through the
//! connection slab (the redis `blocked.c` idea, with nginx-style embedded links).
//!
//! Contract: a connection is parked on every channel of its request or on none. Parking
//! and unparking are O(channels of that request); walking a channel's waiters is O(waiters).
//! A single-channel subscriber — the common case — lives entirely in its connection slot:
//! [`ParkLink`] (12 bytes) holds its list index and neighbours, so parking allocates
//! nothing. A multi-channel subscriber keeps one side node per channel in a worker-wide
//! slab, chained from its `ParkLink`; once the slab has grown that allocates nothing
//! either.
//!
//! A node reference (`u32`) is a connection key, or, with the top bit set, a side-node
//! index. List heads live in a small slab indexed from the connection, plus a map from
//! the store's [`ChannelKey`] for publish notifications. A list that empties is freed.

use std::collections::HashMap;

use slab::Slab;

use crate::store::ChannelKey;

pub const NIL: u32 = u32::MAX;
/// `ParkLink::list` of a multi-channel subscriber (its nodes are side nodes).
const MULTI_LIST: u32 = u32::MAX - 1;
/// Top bit of a node reference: a side node rather than a connection.
const SIDE: u32 = 1 << 31;

/// The links a parked connection carries in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkLink {
    /// List index, [`MULTI_LIST`], or [`NIL`] when not parked.
    list: u32,
    prev: u32,
    /// Next node in the list; for a multi-channel subscriber, its first side node.
    next: u32,
}

const _: () = assert!(std::mem::size_of::<ParkLink>() == 12);

impl ParkLink {
    pub const fn new() -> Self {
        ParkLink {
            list: NIL,
            prev: NIL,
            next: NIL,
        }
    }

    pub fn is_parked(&self) -> bool {
        self.list != NIL
    }
}

impl Default for ParkLink {
    fn default() -> Self {
        Self::new()
    }
}

/// Access to the [`ParkLink`] of a connection slot.
pub trait ParkSlots {
    fn link(&mut self, conn: u32) -> &mut ParkLink;
}

struct List {
    key: ChannelKey,
    head: u32,
    len: u32,
}

struct SideNode {
    conn: u32,
    list: u32,
    prev: u32,
    next: u32,
    /// Next side node of the same connection.
    sibling: u32,
}

#[derive(Default)]
pub struct Parking {
    lists: Slab<List>,
    by_key: HashMap<ChannelKey, u32>,
    side: Slab<SideNode>,
}

impl Parking {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waiters on `key` in this worker.
    #[cfg(test)]
    fn len(&self, key: ChannelKey) -> u32 {
        self.by_key
            .get(&key)
            .map_or(0, |&l| self.lists[l as usize].len)
    }

    /// Number of channel lists with waiters.
    #[cfg(test)]
    fn lists(&self) -> usize {
        self.lists.len()
    }

    fn list_for(&mut self, key: ChannelKey) -> u32 {
        if let Some(&l) = self.by_key.get(&key) {
            return l;
        }
        let l = self.lists.insert(List {
            key,
            head: NIL,
            len: 0,
        }) as u32;
        self.by_key.insert(key, l);
        l
    }

    fn set_prev<S: ParkSlots + ?Sized>(&mut self, slots: &mut S, node: u32, v: u32) {
        if node & SIDE != 0 {
            self.side[(node & !SIDE) as usize].prev = v;
        } else {
            slots.link(node).prev = v;
        }
    }

    fn set_next<S: ParkSlots + ?Sized>(&mut self, slots: &mut S, node: u32, v: u32) {
        if node & SIDE != 0 {
            self.side[(node & !SIDE) as usize].next = v;
        } else {
            slots.link(node).next = v;
        }
    }

    /// Pushes `node` at the front of list `l`.
    fn push<S: ParkSlots + ?Sized>(&mut self, slots: &mut S, l: u32, node: u32) {
        let old = self.lists[l as usize].head;
        self.set_prev(slots, node, NIL);
        self.set_next(slots, node, old);
        if old != NIL {
            self.set_prev(slots, old, node);
        }
        let list = &mut self.lists[l as usize];
        list.head = node;
        list.len += 1;
    }

    /// Unlinks `node` (with neighbours `prev`, `next`) from list `l`; frees an emptied
    /// list and returns its key and whether it emptied.
    fn unlink<S: ParkSlots + ?Sized>(
        &mut self,
        slots: &mut S,
        l: u32,
        prev: u32,
        next: u32,
    ) -> (ChannelKey, bool) {
        if prev != NIL {
            self.set_next(slots, prev, next);
        } else {
            self.lists[l as usize].head = next;
        }
        if next != NIL {
            self.set_prev(slots, next, prev);
        }
        let list = &mut self.lists[l as usize];
        list.len -= 1;
        let key = list.key;
        if list.len == 0 {
            debug_assert_eq!(list.head, NIL, "empty list {key:?} still has a head");
            self.lists.remove(l as usize);
            self.by_key.remove(&key);
            (key, true)
        } else {
            (key, false)
        }
    }

    /// Parks connection `conn` on every channel in `keys` (distinct, at least one).
    pub fn park<S: ParkSlots + ?Sized>(&mut self, slots: &mut S, conn: u32, keys: &[ChannelKey]) {
        debug_assert!(!slots.link(conn).is_parked(), "conn {conn} parked twice");
        debug_assert!(!keys.is_empty() && conn & SIDE == 0);
        if let [key] = keys {
            let l = self.list_for(*key);
            slots.link(conn).list = l;
            self.push(slots, l, conn);
            return;
        }
        let mut first = NIL;
        for key in keys.iter().rev() {
            let l = self.list_for(*key);
            let idx = self.side.insert(SideNode {
                conn,
                list: l,
                prev: NIL,
                next: NIL,
                sibling: first,
            }) as u32;
            first = idx;
            self.push(slots, l, idx | SIDE);
        }
        *slots.link(conn) = ParkLink {
            list: MULTI_LIST,
            prev: NIL,
            next: first,
        };
    }

    /// Unparks `conn` from all its channels (no-op if not parked), calling
    /// `removed(key, list_emptied)` once per channel.
    pub fn unpark<S: ParkSlots + ?Sized>(
        &mut self,
        slots: &mut S,
        conn: u32,
        mut removed: impl FnMut(ChannelKey, bool),
    ) {
        let link = *slots.link(conn);
        *slots.link(conn) = ParkLink::new();
        match link.list {
            NIL => {}
            MULTI_LIST => {
                let mut idx = link.next;
                while idx != NIL {
                    let n = self.side.remove(idx as usize);
                    let (key, emptied) = self.unlink(slots, n.list, n.prev, n.next);
                    removed(key, emptied);
                    idx = n.sibling;
                }
            }
            l => {
                let (key, emptied) = self.unlink(slots, l, link.prev, link.next);
                removed(key, emptied);
            }
        }
    }

    /// First node of the waiters on `key`.
    pub fn first(&self, key: ChannelKey) -> u32 {
        self.by_key
            .get(&key)
            .map_or(NIL, |&l| self.lists[l as usize].head)
    }

    /// The node after `node` in its list.
    pub fn next<S: ParkSlots + ?Sized>(&self, slots: &mut S, node: u32) -> u32 {
        if node & SIDE != 0 {
            self.side[(node & !SIDE) as usize].next
        } else {
            slots.link(node).next
        }
    }

    /// The connection a node belongs to.
    pub fn conn_of(&self, node: u32) -> u32 {
        if node & SIDE != 0 {
            self.side[(node & !SIDE) as usize].conn
        } else {
            node
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u32) -> ChannelKey {
        ChannelKey::test(n)
    }

    struct Slots(Vec<ParkLink>);
    impl ParkSlots for Slots {
        fn link(&mut self, conn: u32) -> &mut ParkLink {
            &mut self.0[conn as usize]
        }
    }

    fn waiters(p: &Parking, s: &mut Slots, key: ChannelKey) -> Vec<u32> {
        let mut v = vec![];
        let mut n = p.first(key);
        while n != NIL {
            v.push(p.conn_of(n));
            n = p.next(s, n);
        }
        v.sort();
        v
    }

    #[test]
    fn single_and_multi_channel_waiters() {
        let mut s = Slots(vec![ParkLink::new(); 8]);
        let mut p = Parking::new();
        p.park(&mut s, 0, &[k(10)]);
        p.park(&mut s, 1, &[k(10), k(20), k(30)]);
        p.park(&mut s, 2, &[k(20)]);
        p.park(&mut s, 3, &[k(10)]);
        assert_eq!(waiters(&p, &mut s, k(10)), vec![0, 1, 3]);
        assert_eq!(waiters(&p, &mut s, k(20)), vec![1, 2]);
        assert_eq!(waiters(&p, &mut s, k(30)), vec![1]);
        assert_eq!(p.len(k(10)), 3);

        let mut removed = vec![];
        p.unpark(&mut s, 1, |key, e| removed.push((key, e)));
        removed.sort();
        assert_eq!(removed, vec![(k(10), false), (k(20), false), (k(30), true)]);
        assert_eq!(waiters(&p, &mut s, k(10)), vec![0, 3]);
        assert_eq!(waiters(&p, &mut s, k(30)), Vec::<u32>::new());
        assert!(!s.0[1].is_parked());
        assert!(p.side.is_empty());

        // Middle, head and tail removals keep the list consistent.
        p.unpark(&mut s, 0, |_, _| {});
        assert_eq!(waiters(&p, &mut s, k(10)), vec![3]);
        p.unpark(&mut s, 3, |key, e| assert_eq!((key, e), (k(10), true)));
        p.unpark(&mut s, 2, |_, _| {});
        assert_eq!(p.lists(), 0);
        assert!(p.by_key.is_empty());
        // Unparking twice is a no-op.
        p.unpark(&mut s, 2, |_, _| panic!("not parked"));
    }

    #[test]
    fn churn_keeps_links_consistent() {
        let n = 200u32;
        let mut s = Slots(vec![ParkLink::new(); n as usize]);
        let mut p = Parking::new();
        // Channels each connection is parked on (empty: not parked).
        let mut on: Vec<Vec<ChannelKey>> = vec![vec![]; n as usize];
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let c = x % n;
            if on[c as usize].is_empty() {
                let keys: Vec<ChannelKey> = match x % 3 {
                    0 => vec![k(1), k(2), k(3)],
                    1 => vec![k(x % 4)],
                    _ => vec![k(2), k(0)],
                };
                p.park(&mut s, c, &keys);
                on[c as usize] = keys;
            } else {
                let mut removed = vec![];
                p.unpark(&mut s, c, |key, _| removed.push(key));
                removed.sort();
                let mut want = std::mem::take(&mut on[c as usize]);
                want.sort();
                assert_eq!(removed, want);
            }
        }
        for key in (0..4).map(k) {
            let want: Vec<u32> = (0..n).filter(|&c| on[c as usize].contains(&key)).collect();
            assert_eq!(waiters(&p, &mut s, key), want, "key {key:?}");
            assert_eq!(p.len(key), want.len() as u32);
        }
    }
}
