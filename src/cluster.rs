//! Cluster mode's I/O-free half: where holdfast keeps its data in Redis, the Lua
//! scripts that make a publish, a delete and a read atomic there, and the envelope a
//! node receives over Redis pub/sub. The threads and sockets that use them are the
//! binary's (`src/server/backplane.rs`); keeping this part here lets it be unit-tested
//! and fuzzed without a Redis.
//!
//! Layout under the prefix `P` (`--redis-prefix`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:id` | string | the newest id issued by any node |
//! | `P:epoch` | string | the first id issued since Redis's data began (it changes when Redis comes back empty) |
//! | `P:s:{ch}` | stream | the channel's buffer: entry `{id}-0`, fields `t` (content type, optional) and `d` (payload); `PEXPIRE` = the message TTL |
//! | `P:c:{ch}` | hash | `last` (newest id published), `lost` (newest id no longer buffered), `del` (deleted since its last publish), `deleted` (id of its newest delete); `PEXPIRE` = TTL + [`META_GRACE_MS`] |
//! | `P:p:{ch}` | pub/sub channel | one envelope per publish or delete |
//!
//! Invariants the scripts keep (each runs atomically inside Redis):
//! - An id is `max(P:id + 1, Redis's clock in µs, the publishing node's newest id + 1)`:
//!   strictly increasing across all channels and nodes, at or above the wall clock, and
//!   never behind what a node has already seen, even if Redis lost `P:id`.
//! - Redis lost data when `P:id` or `P:epoch` is missing (it came back empty) or `P:id`
//!   is below the newest id the asking node has seen (it came back from an older
//!   snapshot, or a lagging replica took over). Any script that notices starts a new
//!   epoch one second of ids above the clock and everything the node saw, with `P:id`
//!   just under it: ids issued before the loss stay below the epoch unless they had run
//!   more than a second ahead of what that node saw, and every cursor below it is told
//!   of a gap. (A read whose cursor is above `P:id` is told of a gap too. What no
//!   running node saw and no cursor shows, holdfast cannot know: `tuning/redis.conf`
//!   says what to do if Redis and every node that published to it can fail together.)
//! - The id is assigned, the message buffered and the envelope published in one script,
//!   so every node subscribed to the channel receives envelopes in id order on its one
//!   pub/sub connection, and a read of `P:id` after a subscription is confirmed marks
//!   the point from which that connection sees every later message.
//! - A channel's buffer is a suffix of its history: it is trimmed from the front only
//!   (count and age), and `lost` keeps the newest id trimmed or deleted. So "the oldest
//!   message newer than cursor `c`" is the first stream entry above `c`, and `c` missed
//!   something exactly when `c < floor`, the channel's **lost floor**: `lost` (buffer not
//!   empty), `last` (buffer empty or gone), or — metadata expired or never there — the
//!   horizon `now − (TTL + META_GRACE_MS)`; and never below `epoch − 1`, since what was
//!   issued before the epoch may be gone with Redis's data.

use std::sync::Arc;

/// How long a channel's metadata outlives its last message, so a client returning up to
/// this long after the channel's messages expired still hears that it missed them.
/// Past it the horizon rule answers (a false alarm at worst, never silence).
pub const META_GRACE_MS: u64 = 3_600_000;

/// The largest id the scripts handle exactly (Lua numbers are doubles). Ids are the
/// clock in microseconds, about 1.8 × 10^15 today, far below it.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: Arc::from(prefix),
        }
    }

    pub fn id(&self) -> String {
        format!("{}:id", self.prefix)
    }

    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}:s:{channel}", self.prefix)
    }

    pub fn meta(&self, channel: &str) -> String {
        format!("{}:c:{channel}", self.prefix)
    }

    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}:p:{channel}", self.prefix)
    }

    /// The holdfast channel a pub/sub channel name carries, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a [u8]) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(self.prefix.as_bytes())?;
        let name = rest.strip_prefix(b":p:")?;
        crate::store::valid_channel_name(name)
            .then(|| std::str::from_utf8(name).ok())
            .flatten()
    }
}

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local function fmt(n) return string.format('%.0f', n) end
local function eid(s) return tonumber(string.match(s, '^(%d+)')) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- The epoch (key ke), checked against P:id (key k) and the newest id the asking node
-- has seen. Redis lost data if either key is missing (it came back empty, or never
-- had any) or P:id is below what the node saw (it came back from an older snapshot):
-- a new epoch then begins one second of ids above the clock and everything seen, so
-- ids issued before the loss stay below it, and P:id is set just under it.
local function epoch_of(k, ke, node_last, now)
  local cur = redis.call('GET', k)
  local e = redis.call('GET', ke)
  if cur and e and tonumber(cur) >= node_last then return tonumber(e) end
  local first = math.max(now, node_last + 1, tonumber(cur or '0') + 1) + 1000000
  redis.call('SET', ke, fmt(first))
  redis.call('SET', k, fmt(first - 1))
  return first
end
-- Trims stream s (metadata m) of entries older than the TTL and, if cap is given,
-- beyond cap entries; records the newest trimmed id in m's `lost`; returns `lost`.
local function trim(s, m, now, ttl_ms, cap)
  local lost0 = tonumber(redis.call('HGET', m, 'lost') or '0')
  local lost = lost0
  local cutoff = now - ttl_ms * 1000
  if cutoff > 0 then
    local old = redis.call('XREVRANGE', s, '(' .. fmt(cutoff) .. '-0', '-', 'COUNT', 1)
    if #old > 0 then
      lost = math.max(lost, eid(old[1][1]))
      redis.call('XTRIM', s, 'MINID', fmt(cutoff) .. '-0')
    end
  end
  if cap then
    local len = redis.call('XLEN', s)
    if len > cap then
      local drop = redis.call('XRANGE', s, '-', '+', 'COUNT', len - cap)
      lost = math.max(lost, eid(drop[#drop][1]))
      redis.call('XTRIM', s, 'MAXLEN', cap)
    end
  end
  if lost ~= lost0 then redis.call('HSET', m, 'lost', fmt(lost)) end
  return lost
end
"#;

/// Publish. KEYS: id, epoch, stream, meta. ARGV: the node's newest id, TTL ms, buffer
/// cap, metadata TTL ms, content type, has content type (`1`/`0`), payload, pub/sub
/// channel. Returns `{id, nodes that received it, buffered, epoch}`.
const PUBLISH_BODY: &str = r#"
local now = now_us()
local epoch = epoch_of(KEYS[1], KEYS[2], tonumber(ARGV[1]), now)
local id = math.max(tonumber(redis.call('GET', KEYS[1])) + 1, now, tonumber(ARGV[1]) + 1)
local ids = fmt(id)
redis.call('SET', KEYS[1], ids)
if ARGV[6] == '1' then
  redis.call('XADD', KEYS[3], ids .. '-0', 't', ARGV[5], 'd', ARGV[7])
else
  redis.call('XADD', KEYS[3], ids .. '-0', 'd', ARGV[7])
end
local lost = trim(KEYS[3], KEYS[4], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
redis.call('HSET', KEYS[4], 'last', ids)
redis.call('HDEL', KEYS[4], 'del')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
local floor = math.max(lost, epoch - 1)
local ct = '-'
if ARGV[6] == '1' then ct = tostring(#ARGV[5]) end
local env = 'M ' .. ids .. ' ' .. fmt(floor) .. ' ' .. fmt(epoch) .. ' ' .. ct .. '\n' .. ARGV[5] .. ARGV[7]
local nodes = redis.call('PUBLISH', ARGV[8], env)
return {ids, nodes, redis.call('XLEN', KEYS[3]), fmt(epoch)}
"#;

/// Delete. KEYS: id, epoch, stream, meta. ARGV: pub/sub channel, metadata TTL ms, the
/// node's newest id.
/// Returns 1 if the channel existed: it had buffered messages, or a node is subscribed
/// to it and it was not deleted since its last publish (nodes stay subscribed a few
/// seconds after their last subscriber leaves). Nodes are told whenever one is
/// subscribed, so a subscriber that arrived after an earlier delete is ended too. A
/// delete takes an id from the same sequence as messages (kept as `deleted`), so a node
/// applies it in order with them, and one that was cut off finds it in a read.
const DELETE_BODY: &str = r#"
local buffered = redis.call('EXISTS', KEYS[3]) == 1
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[1])
local held = tonumber(subs[2]) > 0
local existed = buffered or (held and redis.call('HGET', KEYS[4], 'del') ~= '1')
if not (buffered or held) then return 0 end
local now = now_us()
local epoch = epoch_of(KEYS[1], KEYS[2], tonumber(ARGV[3]), now)
local did = math.max(tonumber(redis.call('GET', KEYS[1])) + 1, now, tonumber(ARGV[3]) + 1)
redis.call('SET', KEYS[1], fmt(did))
local last = tonumber(redis.call('HGET', KEYS[4], 'last') or '0')
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[4], 'del', '1', 'deleted', fmt(did))
if last > 0 then redis.call('HSET', KEYS[4], 'lost', fmt(last)) end
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('PUBLISH', ARGV[1], 'D ' .. fmt(last) .. ' ' .. fmt(epoch) .. ' ' .. fmt(did) .. '\n')
if existed then return 1 end
return 0
"#;

/// Read. KEYS: id, epoch, then stream and meta of each channel. ARGV: cursor (`L`: the
/// latest), entries per channel, TTL ms, horizon ms, newest id to return (`''`: `P:id`),
/// the node's newest id.
/// Returns `{R, epoch}` for `L`, else `{R, epoch, {floor per channel}, {{channel index
/// (1-based), id, has content type, content type, payload}, ...}, {id of the channel's
/// newest delete, 0 if none, per channel}}` with every buffered entry in `(cursor, R]`,
/// at most the given number per channel, oldest first per channel.
const FETCH_BODY: &str = r#"
local now = now_us()
local epoch = epoch_of(KEYS[1], KEYS[2], tonumber(ARGV[6]), now)
local R = tonumber(redis.call('GET', KEYS[1]))
if ARGV[5] ~= '' then R = math.min(R, tonumber(ARGV[5])) end
if ARGV[1] == 'L' then return {fmt(R), fmt(epoch)} end
local c = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local floors = {}
local entries = {}
local dels = {}
for i = 3, #KEYS, 2 do
  local s, m = KEYS[i], KEYS[i + 1]
  local lost = trim(s, m, now, tonumber(ARGV[3]), nil)
  local floor = epoch - 1
  if redis.call('XLEN', s) > 0 then
    floor = math.max(floor, lost)
  else
    local last = redis.call('HGET', m, 'last')
    if last then
      floor = math.max(floor, tonumber(last))
    else
      floor = math.max(floor, now - tonumber(ARGV[4]) * 1000)
    end
  end
  floors[#floors + 1] = fmt(floor)
  dels[#dels + 1] = redis.call('HGET', m, 'deleted') or '0'
  local from = '-'
  if c > 0 then from = '(' .. fmt(c) .. '-0' end
  local es = redis.call('XRANGE', s, from, fmt(R) .. '-0', 'COUNT', limit)
  for _, e in ipairs(es) do
    local f = e[2]
    local ct, has, d = '', '0', ''
    for j = 1, #f, 2 do
      if f[j] == 't' then ct = f[j + 1]; has = '1' elseif f[j] == 'd' then d = f[j + 1] end
    end
    entries[#entries + 1] = {tostring((i - 1) / 2), fmt(eid(e[1])), has, ct, d}
  end
end
return {fmt(R), fmt(epoch), floors, entries, dels}
"#;

/// The publish script's source.
pub fn publish_script() -> String {
    format!("{PRELUDE}{PUBLISH_BODY}")
}

/// The delete script's source.
pub fn delete_script() -> String {
    format!("{PRELUDE}{DELETE_BODY}")
}

/// The read script's source.
pub fn fetch_script() -> String {
    format!("{PRELUDE}{FETCH_BODY}")
}

/// What a node receives on a channel's pub/sub channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A publish.
    Message {
        id: u64,
        /// The channel's lost floor at publish time (see the module doc).
        floor: u64,
        epoch: u64,
        content_type: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    /// The channel was deleted by the delete with id `id`; `last` was its newest
    /// message's id.
    Deleted { last: u64, epoch: u64, id: u64 },
}

fn num(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

impl Envelope<'_> {
    /// Parses an envelope: `M id floor epoch ctlen|-\n` + content type + payload, or
    /// `D last epoch id\n`. `None` for anything else (another writer on our channel).
    pub fn parse(b: &[u8]) -> Option<Envelope<'_>> {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let (head, rest) = (&b[..nl], &b[nl + 1..]);
        let mut f = head.split(|&c| c == b' ');
        let kind = f.next()?;
        match kind {
            b"M" => {
                let id = num(f.next()?)?;
                let floor = num(f.next()?)?;
                let epoch = num(f.next()?)?;
                let ct = f.next()?;
                if f.next().is_some() || id == 0 {
                    return None;
                }
                let (content_type, payload) = if ct == b"-" {
                    (None, rest)
                } else {
                    let n = usize::try_from(num(ct)?).ok()?;
                    if n > rest.len() {
                        return None;
                    }
                    (Some(&rest[..n]), &rest[n..])
                };
                Some(Envelope::Message {
                    id,
                    floor,
                    epoch,
                    content_type,
                    payload,
                })
            }
            b"D" => {
                let last = num(f.next()?)?;
                let epoch = num(f.next()?)?;
                let id = num(f.next()?)?;
                if f.next().is_some() || !rest.is_empty() || id == 0 {
                    return None;
                }
                Some(Envelope::Deleted { last, epoch, id })
            }
            _ => None,
        }
    }

    /// Renders an envelope as the publish script does (tests, fuzzing).
    pub fn render(&self) -> Vec<u8> {
        match self {
            Envelope::Message {
                id,
                floor,
                epoch,
                content_type,
                payload,
            } => {
                let ct = content_type.map_or("-".to_string(), |c| c.len().to_string());
                let mut v = format!("M {id} {floor} {epoch} {ct}\n").into_bytes();
                v.extend_from_slice(content_type.unwrap_or_default());
                v.extend_from_slice(payload);
                v
            }
            Envelope::Deleted { last, epoch, id } => {
                format!("D {last} {epoch} {id}\n").into_bytes()
            }
        }
    }
}

/// One buffered entry a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index into the channels of the read.
    pub channel: usize,
    pub id: u64,
    pub content_type: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// A read's result: `newest` (`R`, every later message reaches a subscribed node over
/// pub/sub), the epoch, each channel's lost floor, and the entries, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fetched {
    pub newest: u64,
    pub epoch: u64,
    pub floors: Vec<u64>,
    pub entries: Vec<Entry>,
    /// Each channel's newest delete id (`0`: none kept).
    pub deletes: Vec<u64>,
}

impl Fetched {
    /// Whether cursor `c` missed something on any channel (`0` asks for everything
    /// buffered and is never told).
    pub fn lost_for(&self, c: u64) -> bool {
        c != 0 && self.floors.iter().any(|&f| c < f)
    }

    /// Sorts the entries of all channels by id (each channel's come oldest first).
    pub fn sort(&mut self) {
        self.entries.sort_by_key(|e| e.id);
    }
}

/// A reply value of the read script, as the Redis client hands it over: strings and
/// arrays only (the script returns nothing else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Bytes(Vec<u8>),
    Int(i64),
    Array(Vec<Reply>),
}

impl Reply {
    fn num(&self) -> Option<u64> {
        match self {
            Reply::Bytes(b) => num(b),
            Reply::Int(i) => u64::try_from(*i).ok(),
            Reply::Array(_) => None,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Parses the read script's reply for `channels` channels; `None` if it is malformed.
pub fn parse_fetch(r: &Reply, channels: usize) -> Option<Fetched> {
    let a = r.array()?;
    let newest = a.first()?.num()?;
    let epoch = a.get(1)?.num()?;
    let mut out = Fetched {
        newest,
        epoch,
        ..Fetched::default()
    };
    if a.len() == 2 {
        return Some(out);
    }
    for f in a.get(2)?.array()? {
        out.floors.push(f.num()?);
    }
    if out.floors.len() != channels {
        return None;
    }
    for d in a.get(4)?.array()? {
        out.deletes.push(d.num()?);
    }
    if out.deletes.len() != channels {
        return None;
    }
    for e in a.get(3)?.array()? {
        let e = e.array()?;
        let index = usize::try_from(e.first()?.num()?).ok()?;
        if index == 0 || index > channels {
            return None;
        }
        let has_ct = e.get(2)?.bytes()? == b"1";
        out.entries.push(Entry {
            channel: index - 1,
            id: e.get(1)?.num()?,
            content_type: has_ct
                .then(|| e.get(3).and_then(Reply::bytes).unwrap_or_default().to_vec()),
            payload: e.get(4)?.bytes()?.to_vec(),
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let cases = [
            Envelope::Message {
                id: 17,
                floor: 3,
                epoch: 10,
                content_type: Some(b"text/plain"),
                payload: b"hello\nworld",
            },
            Envelope::Message {
                id: 1_800_000_000_000_000,
                floor: 0,
                epoch: 1,
                content_type: None,
                payload: b"",
            },
            Envelope::Deleted {
                last: 9,
                epoch: 2,
                id: 12,
            },
        ];
        for e in cases {
            assert_eq!(Envelope::parse(&e.render()), Some(e));
        }
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for b in [
            &b""[..],
            b"M 1 2 3 -",
            b"M 1 2 3 5\nabc",
            b"M x 2 3 -\n",
            b"M 0 2 3 -\n",
            b"M 1 2 3 - extra\n",
            b"D 1\n",
            b"D 1 2\n",
            b"D 1 2 0\n",
            b"D 1 2 3\ntrailing",
            b"X 1 2\n",
            b"M 99999999999999999999999 1 1 -\n",
        ] {
            assert_eq!(Envelope::parse(b), None, "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn pubsub_names_map_back_to_channels() {
        let k = Keys::new("hf");
        assert_eq!(k.channel_of(k.pubsub("a.b").as_bytes()), Some("a.b"));
        assert_eq!(k.channel_of(b"hf:s:a"), None);
        assert_eq!(k.channel_of(b"other:p:a"), None);
        assert_eq!(k.channel_of(b"hf:p:bad name"), None);
    }

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn fetch_replies_parse_and_tell_gaps() {
        let r = Reply::Array(vec![
            b("100"),
            b("50"),
            Reply::Array(vec![b("60"), b("49")]),
            Reply::Array(vec![
                Reply::Array(vec![b("2"), b("70"), b("0"), b(""), b("y")]),
                Reply::Array(vec![b("1"), b("65"), b("1"), b("text/x"), b("x")]),
            ]),
            Reply::Array(vec![b("0"), b("55")]),
        ]);
        let mut f = parse_fetch(&r, 2).expect("parses");
        f.sort();
        assert_eq!(f.newest, 100);
        assert_eq!(f.entries[0].id, 65);
        assert_eq!(f.entries[0].channel, 0);
        assert_eq!(f.entries[0].content_type.as_deref(), Some(&b"text/x"[..]));
        assert_eq!(f.entries[1].content_type, None);
        assert_eq!(f.deletes, [0, 55]);
        assert!(f.lost_for(59));
        assert!(!f.lost_for(60));
        assert!(!f.lost_for(0));
        assert_eq!(parse_fetch(&r, 3), None, "floor count must match");
        let latest = Reply::Array(vec![b("100"), b("50")]);
        assert_eq!(parse_fetch(&latest, 2).unwrap().newest, 100);
    }

    proptest::proptest! {
        /// Whatever arrives on our pub/sub channel (another writer, a corrupted or
        /// truncated message): parsed or refused, never a panic; and whatever the
        /// scripts render parses back to itself.
        #[test]
        fn any_bytes_parse_or_are_refused(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = Envelope::parse(&b);
            let mut m = b"M 5 1 2 3\n".to_vec();
            m.extend_from_slice(&b);
            let _ = Envelope::parse(&m);
        }

        #[test]
        fn rendered_envelopes_round_trip(
            id in 1u64..u64::MAX,
            floor in proptest::prelude::any::<u64>(),
            epoch in proptest::prelude::any::<u64>(),
            ct in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let e = Envelope::Message {
                id,
                floor,
                epoch,
                content_type: ct.as_deref(),
                payload: &payload,
            };
            let bytes = e.render();
            proptest::prop_assert_eq!(Envelope::parse(&bytes), Some(e));
        }
    }
}
