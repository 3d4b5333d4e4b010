package quota

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store in Redis, shared by every instance that uses the same
// server and prefix. Reserve, Commit and Release are each one call of one
// Lua script, so one round trip (EVALSHA; go-redis falls back to EVAL once
// after the server lost its script cache, e.g. after a restart) and
// atomic. Levels is the script in dry mode (one round trip, no writes);
// Keys and Reset SCAN the keyspace and so cost more (they serve quota show
// and quota reset, not mail).
//
// WithBatch takes Commit and Release off their caller's path and shares
// round trips: Commit and Release queue and return, and the queue goes in
// one call of the script every interval (or at 256); concurrent Reserves
// wait while one is on its way and then go together in one call. Under
// load a message then costs its two Reserves about one round trip and
// its ends a fraction of one (BenchmarkRedisMessage). Store says what
// Commit and Release guarantee then; Close flushes.
//
// Time is the caller's now, passed to the scripts: instances must keep
// their clocks NTP-synchronized, and a skew of s between two of them
// moves a window's edges by s (a unit committed by a clock ahead is
// counted up to s longer; by a clock behind, up to s shorter). Key expiry
// (PEXPIRE) is relative, so Redis's own clock does not matter.
//
// Every error of a call to Redis (unreachable, timeout, the caller's
// context ended, an error reply) is returned wrapping ErrUnavailable and
// the cause, so the caller applies the quota's on_error.
//
// Redis Cluster is not supported: one Reserve touches the keys of several
// quotas and keys, which may live in different slots. The key layout is in
// the package doc.
type Redis struct {
	rdb    redis.UniversalClient
	prefix string
	opts   options
	batch  *batch // nil without WithBatch
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store on rdb whose keys all start with prefix, so
// several deployments can share a server. rdb's own timeouts and retries
// apply; the context of each call bounds it too.
func NewRedis(rdb redis.UniversalClient, prefix string, opts ...Option) *Redis {
	r := &Redis{rdb: rdb, prefix: prefix, opts: buildOptions(opts)}
	if r.opts.batch > 0 {
		r.batch = &batch{r: r, interval: r.opts.batch, log: r.opts.log}
	}
	return r
}

// unavailable wraps a failure to use Redis.
func unavailable(err error) error {
	return fmt.Errorf("quota: redis: %w: %w", ErrUnavailable, err)
}

// escapeQuota keeps a quota name free of ':' and of SCAN glob characters,
// so that key names parse back unambiguously: bytes outside
// [A-Za-z0-9_.-] become %XX.
func escapeQuota(q string) string {
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '.', c == '-':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// escapeGlob quotes the characters SCAN MATCH treats specially.
func escapeGlob(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\', '^', '-':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// quotaPrefix starts every key of quota.
func (r *Redis) quotaPrefix(quota string) string {
	return r.prefix + "quota:" + escapeQuota(quota) + ":"
}

// winKey is the hash of one window of one counter.
func (r *Redis) winKey(c Counter, w Window) string {
	return r.quotaPrefix(c.Quota) + string(c.Kind) + ":" + strconv.FormatInt(periodMs(w), 10) + ":" + c.Key
}

// seenKey is the sorted set of the recipients c's key committed to.
func (r *Redis) seenKey(c Counter) string {
	return r.quotaPrefix(c.Quota) + "seen:" + c.Key
}

// keyOf parses the key out of a name under quotaPrefix: after the prefix
// comes "seen:" or "KIND:PERIOD:", then the key as is.
func keyOf(rest string) (string, bool) {
	if k, ok := strings.CutPrefix(rest, "seen:"); ok {
		return k, true
	}
	kind, rest, ok := strings.Cut(rest, ":")
	if !ok {
		return "", false
	}
	switch Kind(kind) {
	case Messages, Recipients, NewRecipients:
	default:
		return "", false
	}
	period, key, ok := strings.Cut(rest, ":")
	if !ok {
		return "", false
	}
	if _, err := strconv.ParseUint(period, 10, 63); err != nil {
		return "", false
	}
	return key, true
}

// keyArgs collects KEYS for a script, each name once.
type keyArgs struct {
	names []string
	index map[string]int
}

// add returns the 1-based Lua index of name.
func (k *keyArgs) add(name string) int {
	if i, ok := k.index[name]; ok {
		return i
	}
	if k.index == nil {
		k.index = make(map[string]int)
	}
	k.names = append(k.names, name)
	k.index[name] = len(k.names)
	return len(k.names)
}

// quotaScript is the one Lua script behind Reserve, Commit, Release and
// Levels: it first ends reservations (commits and releases, in order),
// then checks and reserves (or, dry, only checks) any number of
// reservations, in order. It mirrors Memory exactly (TestStoresAgree,
// TestStoresAgreeShared).
//
// A window hash keeps running totals beside its buckets and reservations
// (see the package doc), so a call costs O(1) redis commands per window
// whatever the number of buckets and reservations it holds: an HMGET of
// the totals, one HMGET of the bucket indexes that left the window since
// the last call (usually none), an HSET when it writes (an HDEL too for
// an end), and a PEXPIRE about once per bucket width. Several ends of one
// hash, and several reservations of one call, share that read and that
// write (endmany, reservemany). It reads the whole hash (HGETALL) only
// when
//   - the hash has no totals (new, or written by an older version),
//   - a reservation may have expired (now >= nx, the earliest expiry; a
//     reservation's Commit or Release leaves nx early, so this happens
//     about once per reservation ttl on a busy key, or when an instance
//     died with reservations open),
//   - more than span+1 bucket indexes left at once (a clock far ahead),
//   - a request does not fit, to compute RetryAfter.
//
// ARGV: number of ends, max remembered, then per end: kind ("c" commit,
// "r" release), id, now ms, number of parts, then per part: amount,
// number of windows, index in KEYS of the seen set (0: none), recipient
// hash, remember ms, then per window: index in KEYS of its hash, bucket
// width ms, span (buckets in the period, see spanOf).
// Then the number of reservations (0: none), and per reservation: now
// ms, ttl ms, id, dry (0/1), number of requests, then per request:
// enforce (0/1), amount, number of windows, index in KEYS of the seen set
// (0: none), recipient hash, remember ms, then per window: index in KEYS
// of its hash, limit, bucket width ms, span.
//
// Reply, when there are reservations, per reservation: reserved (0/1),
// then per request: fits (0/1), charged, then per window: used,
// retry-after ms. Otherwise 0.
var quotaScript = redis.NewScript(`
local pos = 1
local function arg() pos = pos + 1; return ARGV[pos - 1] end
local function num() return tonumber(arg()) end

local META = {lo = true, c = true, r = true, hi = true, nx = true, mx = true, ex = true}


local function hdel(k, fields)
	for i = 1, #fields, 1000 do
		redis.call('HDEL', k, unpack(fields, i, math.min(i + 999, #fields)))
	end
end

-- a reservation field's value: "<amount> <expiry ms>"
local function parseres(v)
	local sp = string.find(v, ' ', 1, true)
	return tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
end

-- rebuild recomputes the totals of s from every field of its hash and
-- lists the fields that no longer count in s.del.
local function rebuild(s, now, low, field)
	local all = redis.call('HGETALL', s.k)
	s.lo, s.c, s.r, s.hi, s.nx, s.mx, s.mine = low, 0, 0, low - 1, 0, 0, 0
	s.del = {}
	for i = 1, #all, 2 do
		local f, v = all[i], all[i + 1]
		if META[f] then
		elseif string.sub(f, 1, 2) == 'r:' then
			local a, e = parseres(v)
			if e > now then
				s.r = s.r + a
				if s.nx == 0 or e < s.nx then s.nx = e end
				if e > s.mx then s.mx = e end
				if f == field then s.mine = a end
			else
				s.del[#s.del + 1] = f
			end
		else
			local idx = tonumber(f)
			if idx >= low then
				s.c = s.c + tonumber(v)
				if idx > s.hi then s.hi = idx end
			else
				s.del[#s.del + 1] = f
			end
		end
	end
	s.dirty = true
end

-- dropold counts out the buckets of window hash k that left the window
-- (indexes s.lo up to low-1, at most s.hi), marks them for deletion and
-- moves s.lo to low.
local function dropold(s, k, low)
	local top = math.min(low - 1, s.hi)
	if top >= s.lo then
		local idxs = {}
		for i = s.lo, top do idxs[#idxs + 1] = i end
		local got = redis.call('HMGET', k, unpack(idxs))
		for j = 1, #idxs do
			if got[j] then
				s.c = s.c - tonumber(got[j])
				s.del[#s.del + 1] = idxs[j]
			end
		end
	end
	s.lo = low
	s.dirty = true
end

-- load reads the totals of window hash k at now: s.c committed units of
-- the buckets still counted, s.r units of the live reservations, s.mine
-- those of field, s.bucket the count of bucket idx (when given). Nothing
-- is written: persist does.
local function load(k, now, width, span, field, idx)
	local v
	if idx then
		v = redis.call('HMGET', k, 'lo', 'c', 'r', 'hi', 'nx', 'mx', 'ex', field, idx)
	else
		v = redis.call('HMGET', k, 'lo', 'c', 'r', 'hi', 'nx', 'mx', 'ex', field)
	end
	local s = {k = k, width = width, span = span, del = {}, dirty = false, mine = 0, bucket = tonumber(v[9]) or 0, ex = tonumber(v[7]) or 0}
	local low = math.floor(now / width) - span
	if not v[1] then
		rebuild(s, now, low, field)
		return s
	end
	s.lo, s.c, s.r, s.hi, s.nx, s.mx = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4]), tonumber(v[5]), tonumber(v[6])
	if s.r > 0 and now >= s.nx then
		rebuild(s, now, low, field)
		return s
	end
	-- every reservation field is live: s.r is exact
	if v[8] then s.mine = parseres(v[8]) end
	if low > s.lo then
		if math.min(low - 1, s.hi) - s.lo > span + 1 then
			rebuild(s, now, low, field)
			return s
		end
		dropold(s, k, low)
	end
	return s
end

-- persist writes s back with the field/value pairs in extra, and sets
-- the hash's expiry to when its last bucket leaves or its last
-- reservation may expire; a hash left with nothing that counts is
-- deleted.
local function persist(s, now, extra)
	if s.r <= 0 then s.r, s.nx, s.mx = 0, 0, 0 end
	local need = math.max(s.mx, (s.hi + s.span + 1) * s.width)
	if (s.c <= 0 and s.r <= 0) or need <= now then
		redis.call('DEL', s.k)
		return
	end
	-- ex: when the hash expires (set on the clock of the caller that set
	-- it); moved one bucket past what is needed, so that a busy hash
	-- sets it about once per bucket width, not on every call
	local ex = s.ex
	if ex < need then ex = need + s.width end
	if #s.del > 0 then hdel(s.k, s.del) end
	redis.call('HSET', s.k, 'lo', s.lo, 'c', s.c, 'r', s.r, 'hi', s.hi, 'nx', s.nx, 'mx', s.mx, 'ex', ex, unpack(extra))
	if ex ~= s.ex then redis.call('PEXPIRE', s.k, ex - now) end
end

local function remember(sk, hash, now, rem, maxr)
	local cur = redis.call('ZSCORE', sk, hash)
	if not cur or tonumber(cur) < now then redis.call('ZADD', sk, now, hash) end
	redis.call('ZREMRANGEBYSCORE', sk, '-inf', now - rem)
	local n = redis.call('ZCARD', sk)
	if n > maxr then redis.call('ZREMRANGEBYRANK', sk, 0, n - maxr - 1) end
	local top = redis.call('ZRANGE', sk, -1, -1, 'WITHSCORES')
	if top[2] then
		local keep = tonumber(top[2]) + rem - now
		if keep > 0 then redis.call('PEXPIRE', sk, keep) else redis.call('DEL', sk) end
	end
end

-- endone applies one end on one window hash: a commit counts its units
-- at its now (whether the reservation is still there, expired or
-- unknown), a release drops the reservation.
local function endone(op)
	local k, field, now, amount = op.k, op.field, op.now, op.amount
	if op.commit then
		local idx = math.floor(now / op.width)
		local s = load(k, now, op.width, op.span, field, idx)
		local extra = {}
		local changed = s.dirty
		if s.mine > 0 then
			s.r = s.r - s.mine
			s.del[#s.del + 1] = field
			changed = true
		end
		if amount > 0 then
			-- a clock more than a period behind the one that last
			-- wrote: buckets below lo are gone, so lo moves down
			if idx < s.lo then s.lo = idx end
			extra = {idx, s.bucket + amount}
			s.c = s.c + amount
			if idx > s.hi then s.hi = idx end
			changed = true
		end
		if changed then persist(s, now, extra) end
	else
		local v = redis.call('HMGET', k, field, 'r')
		if v[1] then
			redis.call('HDEL', k, field)
			if v[2] then
				local r = tonumber(v[2]) - parseres(v[1])
				if r > 0 then redis.call('HSET', k, 'r', r) else redis.call('HSET', k, 'r', 0, 'nx', 0, 'mx', 0) end
			end
		end
	end
end

-- endmany applies the ends of one window hash, in order, with one read
-- and one write: the common case of a flush on a busy key. It applies
-- them one by one instead when there is no commit (no now), the hash has
-- no totals, a reservation may have expired, or buckets leave too far
-- apart for one pass.
local function endmany(g)
	local now
	local names = {'lo', 'c', 'r', 'hi', 'nx', 'mx', 'ex'}
	for _, op in ipairs(g.ops) do
		names[#names + 1] = op.field
		if op.commit then
			if not now or op.now > now then now = op.now end
			op.idx = math.floor(op.now / g.width)
			if op.amount > 0 then names[#names + 1] = op.idx end
		end
	end
	local v = now and redis.call('HMGET', g.k, unpack(names))
	local s, low
	local slow = not v or not v[1]
	if not slow then
		s = {k = g.k, width = g.width, span = g.span, del = {}, lo = tonumber(v[1]), c = tonumber(v[2]), r = tonumber(v[3]),
			hi = tonumber(v[4]), nx = tonumber(v[5]), mx = tonumber(v[6]), ex = tonumber(v[7]) or 0}
		low = math.floor(now / g.width) - g.span
		slow = (s.r > 0 and now >= s.nx) or math.min(low - 1, s.hi) - s.lo > g.span + 1
		for _, op in ipairs(g.ops) do
			if op.idx and (op.idx < low or op.idx < s.lo) then slow = true end
		end
	end
	if slow then
		for _, op in ipairs(g.ops) do endone(op) end
		return
	end
	local vals = {}
	for i = 8, #names do vals[names[i]] = v[i] end
	if low > s.lo then
		local top = math.min(low - 1, s.hi)
		if top >= s.lo then
			local idxs = {}
			for i = s.lo, top do idxs[#idxs + 1] = i end
			local got = redis.call('HMGET', s.k, unpack(idxs))
			for j = 1, #idxs do
				if got[j] then
					s.c = s.c - tonumber(got[j])
					s.del[#s.del + 1] = idxs[j]
				end
			end
		end
		s.lo = low
	end
	local touched = {}
	for _, op in ipairs(g.ops) do
		local rv = vals[op.field]
		if rv then
			s.r = s.r - parseres(rv)
			vals[op.field] = nil
			s.del[#s.del + 1] = op.field
		end
		if op.commit and op.amount > 0 then
			if not touched[op.idx] then
				touched[op.idx] = true
				touched[#touched + 1] = op.idx
			end
			vals[op.idx] = (tonumber(vals[op.idx]) or 0) + op.amount
			s.c = s.c + op.amount
			if op.idx > s.hi then s.hi = op.idx end
		end
	end
	local extra = {}
	for _, idx in ipairs(touched) do
		extra[#extra + 1] = idx
		extra[#extra + 1] = vals[idx]
	end
	persist(s, now, extra)
end

-- ends: read them all, remembering recipients as they come, then apply
-- them per window hash in the order the hashes first appear.
local nends = num()
local maxr = num()
local groups, order = {}, {}
for _ = 1, nends do
	local commit = arg() == 'c'
	local field = 'r:' .. arg()
	local now = num()
	local nparts = num()
	for _ = 1, nparts do
		local amount, nwin, seen, hash, rem = num(), num(), num(), arg(), num()
		for _ = 1, nwin do
			local k, width, span = KEYS[num()], num(), num()
			local g = groups[k]
			if not g then
				g = {k = k, width = width, span = span, ops = {}}
				groups[k] = g
				order[#order + 1] = g
			end
			g.ops[#g.ops + 1] = {k = k, width = width, span = span, commit = commit, field = field, now = now, amount = amount}
		end
		if commit and seen > 0 then remember(KEYS[seen], hash, now, rem, maxr) end
	end
end
for _, g in ipairs(order) do
	if #g.ops == 1 then endone(g.ops[1]) else endmany(g) end
end

local out = {}

-- parsereserve reads the arguments of one reservation.
local function parsereserve()
	local r = {now = num(), ttl = num(), field = 'r:' .. arg(), dry = arg() == '1', reqs = {}}
	for i = 1, num() do
		local q = {enforce = arg() == '1', charge = num(), nwin = num(), seen = num(), hash = arg(), rem = num(), wins = {}}
		for j = 1, q.nwin do
			q.wins[j] = {k = KEYS[num()], limit = num(), width = num(), span = num()}
		end
		r.reqs[i] = q
	end
	return r
end

-- retry walks the buckets counted at now oldest first (read on this, the
-- refusal path, only) to the one whose leaving frees need units.
local function retry(s, now, need)
	if not s.b then
		local all = redis.call('HGETALL', s.k)
		s.b = {}
		for i = 1, #all, 2 do
			local f = all[i]
			if not META[f] and string.sub(f, 1, 2) ~= 'r:' then
				s.b[#s.b + 1] = {tonumber(f), tonumber(all[i + 1])}
			end
		end
		table.sort(s.b, function(x, y) return x[1] < y[1] end)
	end
	local low = math.floor(now / s.width) - s.span
	local freed, last = 0, 0
	for _, b in ipairs(s.b) do
		if b[1] >= low then
			freed = freed + b[2]
			last = (b[1] + s.span + 1) * s.width - now
			if freed >= need then return last end
		end
	end
	if last > s.width then return last end
	return s.width
end

-- check checks the requests of r on the window states get returns (each
-- with s.c, s.r, and s.tent, s.add at 0), appends r's reply to out, adds
-- what each state is charged to s.add, and says whether r is reserved.
local function check(r, get)
	local now = r.now
	local ok = true
	local plan = {}
	for i, q in ipairs(r.reqs) do
		local charge = q.charge
		local known = false
		if q.seen > 0 then
			local sc = redis.call('ZSCORE', KEYS[q.seen], q.hash)
			if sc and tonumber(sc) + q.rem > now then
				known = true
				charge = 0
			end
		end
		local fits = true
		local wins = {}
		for j, w in ipairs(q.wins) do
			local s = get(w.k, w.width, w.span)
			local used = s.c + s.r + s.tent
			local ra = 0
			if not known and used + charge > w.limit then
				fits = false
				ra = retry(s, now, used + charge - w.limit)
			end
			wins[j] = {s = s, used = used, ra = ra}
		end
		if not fits and q.enforce then ok = false end
		if fits or not q.enforce then
			for _, w in ipairs(wins) do w.s.tent = w.s.tent + charge end
		end
		plan[i] = {fits = fits, charge = charge, wins = wins}
	end
	if r.dry then ok = false end
	out[#out + 1] = ok and 1 or 0
	for _, p in ipairs(plan) do
		local charged = 0
		if ok then charged = p.charge end
		out[#out + 1] = p.fits and 1 or 0
		out[#out + 1] = charged
		for _, w in ipairs(p.wins) do
			out[#out + 1] = w.used + charged
			out[#out + 1] = w.ra
			w.s.add = w.s.add + charged
		end
	end
	return ok
end

-- reserveone checks and (unless dry) reserves r on its own: each window
-- hash read once and written once.
local function reserveone(r)
	local states = {}
	check(r, function(k, width, span)
		local s = states[k]
		if s then return s end
		s = load(k, r.now, width, span, r.field)
		s.tent, s.add = 0, 0
		states[k] = s
		return s
	end)
	if r.dry then return end
	local exp = r.now + r.ttl
	for _, s in pairs(states) do
		if s.add > 0 then
			if s.r == 0 or exp < s.nx then s.nx = exp end
			if exp > s.mx then s.mx = exp end
			s.r = s.r + s.add
			persist(s, r.now, {r.field, s.mine + s.add .. ' ' .. exp})
		elseif s.dirty then
			persist(s, r.now, {})
		end
	end
end

-- reservemany checks and reserves rs in order, exactly as reserveone one
-- after the other would, reading each window hash once and writing it
-- once for all of them: the common case of Reserves that shared a round
-- trip on busy keys. It returns false, having written nothing, when a
-- hash has no totals, a reservation may expire within the span of rs, or
-- buckets leave too far apart for one pass: reserveone then does it.
local function reservemany(rs)
	local maxnow, minexp = nil, nil
	local hs, order = {}, {}
	for _, r in ipairs(rs) do
		if r.dry then return false end
		if not maxnow or r.now > maxnow then maxnow = r.now end
		if not minexp or r.now + r.ttl < minexp then minexp = r.now + r.ttl end
		for _, q in ipairs(r.reqs) do
			for _, w in ipairs(q.wins) do
				local h = hs[w.k]
				if not h then
					h = {width = w.width, span = w.span, names = {'lo', 'c', 'r', 'hi', 'nx', 'mx', 'ex'}, set = {}}
					hs[w.k] = h
					order[#order + 1] = w.k
				end
				if not h.set[r.field] then
					h.set[r.field] = true
					h.names[#h.names + 1] = r.field
				end
			end
		end
	end
	if not maxnow or minexp <= maxnow then return false end
	local states = {}
	for _, k in ipairs(order) do
		local h = hs[k]
		local v = redis.call('HMGET', k, unpack(h.names))
		if not v[1] then return false end
		local s = {k = k, width = h.width, span = h.span, del = {}, dirty = false, lo = tonumber(v[1]), c = tonumber(v[2]),
			r = tonumber(v[3]), hi = tonumber(v[4]), nx = tonumber(v[5]), mx = tonumber(v[6]), ex = tonumber(v[7]) or 0,
			f = {}, fexp = {}, written = {}}
		if s.r > 0 and maxnow >= s.nx then return false end
		local low = math.floor(maxnow / h.width) - h.span
		if math.min(low - 1, s.hi) - s.lo > h.span + 1 then return false end
		for i = 8, #h.names do
			if v[i] then s.f[h.names[i]] = parseres(v[i]) end
		end
		states[k] = s
	end
	-- every reservation present is live until the last now: s.r is exact
	for _, r in ipairs(rs) do
		for _, s in pairs(states) do s.tent, s.add = 0, 0 end
		check(r, function(k)
			local s = states[k]
			local low = math.floor(r.now / s.width) - s.span
			if low > s.lo then dropold(s, k, low) end
			return s
		end)
		local exp = r.now + r.ttl
		for _, s in pairs(states) do
			if s.add > 0 then
				if s.r == 0 or exp < s.nx then s.nx = exp end
				if exp > s.mx then s.mx = exp end
				s.r = s.r + s.add
				if not s.fexp[r.field] then s.written[#s.written + 1] = r.field end
				s.f[r.field] = (s.f[r.field] or 0) + s.add
				s.fexp[r.field] = exp
				s.dirty = true
			end
		end
	end
	for _, k in ipairs(order) do
		local s = states[k]
		if s.dirty then
			local extra = {}
			for _, f in ipairs(s.written) do
				extra[#extra + 1] = f
				extra[#extra + 1] = s.f[f] .. ' ' .. s.fexp[f]
			end
			persist(s, maxnow, extra)
		end
	end
	return true
end

local nres = num()
if nres == 0 then return 0 end
local rs = {}
for i = 1, nres do rs[i] = parsereserve() end
if nres == 1 or not reservemany(rs) then
	for _, r in ipairs(rs) do reserveone(r) end
end
return out
`)

// script collects the KEYS and ARGV of one call of quotaScript.
type script struct {
	keys keyArgs
	args []any
}

// ends appends the ends section: the commits and releases of es, in
// order.
func (r *Redis) ends(sc *script, es []end) {
	sc.args = append(sc.args, len(es), r.opts.maxRemembered)
	for _, e := range es {
		kind := "r"
		if e.commit {
			kind = "c"
		}
		sc.args = append(sc.args, kind, e.id, e.nowMs, len(e.parts))
		for _, p := range e.parts {
			seen, hash, remember := 0, "", int64(0)
			if e.commit && remembers(p.Counter, p.Recipient, p.Remember) {
				seen, hash, remember = sc.keys.add(r.seenKey(p.Counter)), hashArg(p.Recipient), ceilMs(p.Remember)
			}
			sc.args = append(sc.args, p.Amount, len(p.Windows), seen, hash, remember)
			for _, w := range p.Windows {
				sc.args = append(sc.args, sc.keys.add(r.winKey(p.Counter, w)), widthMs(w), spanOf(w))
			}
		}
	}
}

// end is one Commit (commit true) or Release of reservation id.
type end struct {
	commit bool
	id     string
	nowMs  int64 // Commit's now; unused by a Release
	parts  []Part
}

// Reserve implements Store in one round trip.
func (r *Redis) Reserve(ctx context.Context, id string, now time.Time, ttl time.Duration, reqs []Request) ([]Result, bool, error) {
	if err := checkRequests(reqs); err != nil {
		return nil, false, err
	}
	return r.reserve(ctx, id, now, ttl, reqs, false)
}

func (r *Redis) reserve(ctx context.Context, id string, now time.Time, ttl time.Duration, reqs []Request, dry bool) ([]Result, bool, error) {
	c := &reserveCall{id: id, nowMs: now.UnixMilli(), ttlMs: ttlMs(ttl), reqs: reqs, dry: dry}
	if r.batch != nil && !dry {
		return r.batch.reserve(ctx, c)
	}
	if err := r.runReserves(ctx, []*reserveCall{c}); err != nil {
		return nil, false, err
	}
	return c.res, c.ok, c.err
}

// reserveCall is one Reserve (or, dry, Levels) in a call of quotaScript.
type reserveCall struct {
	id    string
	nowMs int64
	ttlMs int64
	reqs  []Request
	dry   bool

	res   []Result
	ok    bool
	err   error         // a reply that does not parse
	done  chan struct{} // closed when res, ok and err are set (shared round trips)
	state atomic.Int32  // callWaiting, callDone, callAbandoned
}

// runReserves checks calls in one round trip, in order, and sets their
// results; the error is the round trip's.
func (r *Redis) runReserves(ctx context.Context, calls []*reserveCall) error {
	sc := script{args: make([]any, 0, 3+8*len(calls))}
	r.ends(&sc, nil)
	sc.args = append(sc.args, len(calls))
	for _, c := range calls {
		sc.args = append(sc.args, c.nowMs, c.ttlMs, c.id, boolArg(c.dry), len(c.reqs))
		for _, q := range c.reqs {
			seen, hash, remember := 0, "", int64(0)
			if remembers(q.Counter, q.Recipient, q.Remember) {
				seen, hash, remember = sc.keys.add(r.seenKey(q.Counter)), hashArg(q.Recipient), ceilMs(q.Remember)
			}
			sc.args = append(sc.args, boolArg(q.Enforce), q.Amount, len(q.Windows), seen, hash, remember)
			for _, w := range q.Windows {
				sc.args = append(sc.args, sc.keys.add(r.winKey(q.Counter, w)), w.Limit, widthMs(w), spanOf(w))
			}
		}
	}
	vals, err := quotaScript.Run(ctx, r.rdb, sc.keys.names, sc.args...).Int64Slice()
	if err != nil {
		return unavailable(err)
	}
	for _, c := range calls {
		want := 1
		for _, q := range c.reqs {
			want += 2 + 2*len(q.Windows)
		}
		if len(vals) < want {
			c.err = unavailable(fmt.Errorf("quota script replied %d values, want %d", len(vals), want))
			continue
		}
		c.res = make([]Result, len(c.reqs))
		c.ok = vals[0] == 1
		pos := 1
		for i, q := range c.reqs {
			res := Result{Fits: vals[pos] == 1, Charged: vals[pos+1], Levels: make([]Level, len(q.Windows))}
			pos += 2
			for j, w := range q.Windows {
				res.Levels[j] = Level{Window: w, Used: vals[pos], RetryAfter: time.Duration(vals[pos+1]) * time.Millisecond}
				pos += 2
			}
			c.res[i] = res
		}
		vals = vals[want:]
	}
	return nil
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

// hashArg is the member a seen set stores for rcpt: recipientHash in hex.
func hashArg(rcpt string) string {
	return strconv.FormatUint(recipientHash(rcpt), 16)
}

// runEnds applies es in one round trip.
func (r *Redis) runEnds(ctx context.Context, es []end) error {
	var sc script
	r.ends(&sc, es)
	if len(sc.keys.names) == 0 {
		return nil
	}
	sc.args = append(sc.args, 0)
	if err := quotaScript.Run(ctx, r.rdb, sc.keys.names, sc.args...).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Commit implements Store in one round trip, or, WithBatch, by queueing
// the commit for the next flush (it keeps parts until then).
func (r *Redis) Commit(ctx context.Context, id string, now time.Time, parts []Part) error {
	if err := checkParts(parts); err != nil {
		return err
	}
	e := end{commit: true, id: id, nowMs: now.UnixMilli(), parts: parts}
	if r.batch != nil && r.batch.add(e) {
		return nil
	}
	return r.runEnds(ctx, []end{e})
}

// Release implements Store in one round trip, or, WithBatch, by queueing
// the release for the next flush (it keeps parts until then).
func (r *Redis) Release(ctx context.Context, id string, parts []Part) error {
	e := end{id: id, parts: parts}
	if r.batch != nil && r.batch.add(e) {
		return nil
	}
	return r.runEnds(ctx, []end{e})
}

// Levels implements Store in one round trip. A window's RetryAfter is for
// a request of one unit: non-zero when the window is full.
func (r *Redis) Levels(ctx context.Context, now time.Time, c Counter, windows []Window) ([]Level, error) {
	reqs := []Request{{Counter: c, Windows: windows, Amount: 1}}
	if err := checkRequests(reqs); err != nil {
		return nil, err
	}
	res, _, err := r.reserve(ctx, "", now, 0, reqs, true)
	if err != nil {
		return nil, err
	}
	return res[0].Levels, nil
}

// scanCount is the COUNT hint of Keys' and Reset's SCANs.
const scanCount = 1000

// Keys implements Store with SCAN: it costs a pass over the keyspace (or
// until limit keys are found), and may list a key whose hashes hold only
// counts that no longer count.
func (r *Redis) Keys(ctx context.Context, quota string, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, nil
	}
	pre := r.quotaPrefix(quota)
	seen := make(map[string]bool)
	var keys []string
	iter := r.rdb.Scan(ctx, 0, escapeGlob(pre)+"*", scanCount).Iterator()
	for len(keys) < limit && iter.Next(ctx) {
		k, ok := keyOf(strings.TrimPrefix(iter.Val(), pre))
		if ok && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, unavailable(err)
	}
	return keys, nil
}

// Reset implements Store: a SCAN for the key's windows, then one DEL.
func (r *Redis) Reset(ctx context.Context, quota, key string) error {
	pre := r.quotaPrefix(quota)
	var names []string
	iter := r.rdb.Scan(ctx, 0, escapeGlob(pre)+"*:"+escapeGlob(key), scanCount).Iterator()
	for iter.Next(ctx) {
		if k, ok := keyOf(strings.TrimPrefix(iter.Val(), pre)); ok && k == key {
			names = append(names, iter.Val())
		}
	}
	if err := iter.Err(); err != nil {
		return unavailable(err)
	}
	if len(names) == 0 {
		return nil
	}
	if err := r.rdb.Del(ctx, names...).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}
