package quota

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Store in Redis, shared by every instance that uses the same
// server and prefix. Reserve, Commit and Release are each one Lua script,
// so one round trip (EVALSHA; go-redis falls back to EVAL once after the
// server lost its script cache, e.g. after a restart) and atomic. Levels is
// the Reserve script in dry mode (one round trip, no writes); Keys and
// Reset SCAN the keyspace and so cost more (they serve quota show and
// quota reset, not mail).
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
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store on rdb whose keys all start with prefix, so
// several deployments can share a server. rdb's own timeouts and retries
// apply; the context of each call bounds it too.
func NewRedis(rdb redis.UniversalClient, prefix string, opts ...Option) *Redis {
	return &Redis{rdb: rdb, prefix: prefix, opts: buildOptions(opts)}
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

// reserveScript checks and reserves (or, dry, only checks) a list of
// requests. It mirrors Memory.check and Memory.Reserve exactly.
//
// Layout of a window hash: field "<bucket index>" = committed count,
// field "r:<id>" = "<amount> <expiry ms>" for a reservation.
//
// ARGV: now ms, ttl ms, id, dry (0/1), number of requests, then per
// request: enforce (0/1), amount, number of windows, index in KEYS of the
// seen set (0: none), recipient hash, remember ms, then per window: index
// in KEYS of its hash, limit, bucket width ms, span (buckets in the
// period, see spanOf).
//
// Reply: reserved (0/1), then per request: fits (0/1), charged, then per
// window: used, retry-after ms.
var reserveScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local field = 'r:' .. ARGV[3]
local dry = ARGV[4] == '1'
local nreq = tonumber(ARGV[5])
local states = {}

local function hdel(k, fields)
	for i = 1, #fields, 1000 do
		redis.call('HDEL', k, unpack(fields, i, math.min(i + 999, #fields)))
	end
end

local function load(k, width, span)
	local s = states[k]
	if s then return s end
	s = {k = k, width = width, span = span, used = 0, tent = 0, b = {}, dead = {}, mine = 0}
	local low = math.floor(now / width) - span
	local all = redis.call('HGETALL', k)
	for i = 1, #all, 2 do
		local f, v = all[i], all[i + 1]
		if string.sub(f, 1, 2) == 'r:' then
			local sp = string.find(v, ' ', 1, true)
			local a, e = tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
			if e > now then
				s.used = s.used + a
				if f == field then s.mine = a end
				if not s.maxexp or e > s.maxexp then s.maxexp = e end
			else
				s.dead[#s.dead + 1] = f
			end
		else
			local idx, n = tonumber(f), tonumber(v)
			if idx >= low then
				s.used = s.used + n
				s.b[#s.b + 1] = {idx, n}
				if not s.maxidx or idx > s.maxidx then s.maxidx = idx end
			else
				s.dead[#s.dead + 1] = f
			end
		end
	end
	table.sort(s.b, function(x, y) return x[1] < y[1] end)
	states[k] = s
	return s
end

local function retry(s, need)
	local freed, last = 0, 0
	for _, b in ipairs(s.b) do
		freed = freed + b[2]
		last = (b[1] + s.span + 1) * s.width - now
		if freed >= need then return last end
	end
	if last > s.width then return last end
	return s.width
end

local ok = true
local pos = 6
local plan = {}
for i = 1, nreq do
	local enforce = ARGV[pos] == '1'
	local charge = tonumber(ARGV[pos + 1])
	local nwin = tonumber(ARGV[pos + 2])
	local seen = tonumber(ARGV[pos + 3])
	local hash = ARGV[pos + 4]
	local remember = tonumber(ARGV[pos + 5])
	pos = pos + 6
	local known = false
	if seen > 0 then
		local sc = redis.call('ZSCORE', KEYS[seen], hash)
		if sc and tonumber(sc) + remember > now then
			known = true
			charge = 0
		end
	end
	local fits = true
	local wins = {}
	for j = 1, nwin do
		local s = load(KEYS[tonumber(ARGV[pos])], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]))
		local limit = tonumber(ARGV[pos + 1])
		pos = pos + 4
		local used = s.used + s.tent
		local ra = 0
		if not known and used + charge > limit then
			fits = false
			ra = retry(s, used + charge - limit)
		end
		wins[j] = {s = s, used = used, ra = ra}
	end
	if not fits and enforce then ok = false end
	if fits or not enforce then
		for _, w in ipairs(wins) do w.s.tent = w.s.tent + charge end
	end
	plan[i] = {fits = fits, charge = charge, wins = wins}
end

if dry then ok = false end
local exp = now + ttl
local out = {ok and 1 or 0}
for _, p in ipairs(plan) do
	local charged = 0
	if ok then charged = p.charge end
	out[#out + 1] = p.fits and 1 or 0
	out[#out + 1] = charged
	for _, w in ipairs(p.wins) do
		out[#out + 1] = w.used + charged
		out[#out + 1] = w.ra
		if charged > 0 then
			local s = w.s
			s.mine = s.mine + charged
			s.dirty = true
		end
	end
end

for k, s in pairs(states) do
	if s.dirty then
		hdel(k, s.dead)
		redis.call('HSET', k, field, s.mine .. ' ' .. exp)
		local keep = exp - now
		if s.maxexp and s.maxexp - now > keep then keep = s.maxexp - now end
		local last = s.maxidx and (s.maxidx + s.span + 1) * s.width - now
		if last and last > keep then keep = last end
		redis.call('PEXPIRE', k, keep)
	end
end
return out
`)

// commitScript counts the parts of a reservation and remembers their
// recipients; it mirrors Memory.Commit.
//
// ARGV: now ms, id, number of parts, max remembered, then per part:
// amount, number of windows, index in KEYS of the seen set (0: none),
// recipient hash, remember ms, then per window: index in KEYS of its hash,
// bucket width ms, span.
var commitScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local field = 'r:' .. ARGV[2]
local nparts = tonumber(ARGV[3])
local maxr = tonumber(ARGV[4])
local pos = 5

local function hdel(k, fields)
	for i = 1, #fields, 1000 do
		redis.call('HDEL', k, unpack(fields, i, math.min(i + 999, #fields)))
	end
end

for i = 1, nparts do
	local amount = tonumber(ARGV[pos])
	local nwin = tonumber(ARGV[pos + 1])
	local seen = tonumber(ARGV[pos + 2])
	local hash = ARGV[pos + 3]
	local remember = tonumber(ARGV[pos + 4])
	pos = pos + 5
	for j = 1, nwin do
		local k = KEYS[tonumber(ARGV[pos])]
		local width = tonumber(ARGV[pos + 1])
		local span = tonumber(ARGV[pos + 2])
		pos = pos + 3
		local low = math.floor(now / width) - span
		local all = redis.call('HGETALL', k)
		local dead, mine, maxidx, maxexp = {}, false, nil, nil
		for x = 1, #all, 2 do
			local f, v = all[x], all[x + 1]
			if f == field then
				mine = true
				dead[#dead + 1] = f
			elseif string.sub(f, 1, 2) == 'r:' then
				local e = tonumber(string.sub(v, string.find(v, ' ', 1, true) + 1))
				if e > now then
					if not maxexp or e > maxexp then maxexp = e end
				else
					dead[#dead + 1] = f
				end
			else
				local idx = tonumber(f)
				if idx >= low then
					if not maxidx or idx > maxidx then maxidx = idx end
				else
					dead[#dead + 1] = f
				end
			end
		end
		if amount > 0 or mine then
			hdel(k, dead)
			if amount > 0 then
				local idx = math.floor(now / width)
				redis.call('HINCRBY', k, idx, amount)
				if not maxidx or idx > maxidx then maxidx = idx end
			end
			local keep = 0
			if maxexp then keep = maxexp - now end
			if maxidx and (maxidx + span + 1) * width - now > keep then keep = (maxidx + span + 1) * width - now end
			if keep > 0 then redis.call('PEXPIRE', k, keep) end
		end
	end
	if seen > 0 then
		local sk = KEYS[seen]
		local cur = redis.call('ZSCORE', sk, hash)
		if not cur or tonumber(cur) < now then redis.call('ZADD', sk, now, hash) end
		redis.call('ZREMRANGEBYSCORE', sk, '-inf', now - remember)
		local n = redis.call('ZCARD', sk)
		if n > maxr then redis.call('ZREMRANGEBYRANK', sk, 0, n - maxr - 1) end
		local top = redis.call('ZRANGE', sk, -1, -1, 'WITHSCORES')
		if top[2] then
			local keep = tonumber(top[2]) + remember - now
			if keep > 0 then redis.call('PEXPIRE', sk, keep) else redis.call('DEL', sk) end
		end
	end
end
return 0
`)

// releaseScript drops reservation ARGV[1] from every window hash in KEYS.
var releaseScript = redis.NewScript(`
local field = 'r:' .. ARGV[1]
for _, k in ipairs(KEYS) do redis.call('HDEL', k, field) end
return 0
`)

// Reserve implements Store in one round trip.
func (r *Redis) Reserve(ctx context.Context, id string, now time.Time, ttl time.Duration, reqs []Request) ([]Result, bool, error) {
	if err := checkRequests(reqs); err != nil {
		return nil, false, err
	}
	return r.reserve(ctx, id, now, ttl, reqs, false)
}

func (r *Redis) reserve(ctx context.Context, id string, now time.Time, ttl time.Duration, reqs []Request, dry bool) ([]Result, bool, error) {
	var keys keyArgs
	args := make([]any, 0, 5+8*len(reqs))
	args = append(args, now.UnixMilli(), ttlMs(ttl), id, boolArg(dry), len(reqs))
	for _, q := range reqs {
		seen, hash, remember := 0, "", int64(0)
		if remembers(q.Counter, q.Recipient, q.Remember) {
			seen, hash, remember = keys.add(r.seenKey(q.Counter)), hashArg(q.Recipient), ceilMs(q.Remember)
		}
		args = append(args, boolArg(q.Enforce), q.Amount, len(q.Windows), seen, hash, remember)
		for _, w := range q.Windows {
			args = append(args, keys.add(r.winKey(q.Counter, w)), w.Limit, widthMs(w), spanOf(w))
		}
	}
	vals, err := reserveScript.Run(ctx, r.rdb, keys.names, args...).Int64Slice()
	if err != nil {
		return nil, false, unavailable(err)
	}
	want := 1
	for _, q := range reqs {
		want += 2 + 2*len(q.Windows)
	}
	if len(vals) != want {
		return nil, false, unavailable(fmt.Errorf("reserve script replied %d values, want %d", len(vals), want))
	}
	results := make([]Result, len(reqs))
	pos := 1
	for i, q := range reqs {
		res := Result{Fits: vals[pos] == 1, Charged: vals[pos+1], Levels: make([]Level, len(q.Windows))}
		pos += 2
		for j, w := range q.Windows {
			res.Levels[j] = Level{Window: w, Used: vals[pos], RetryAfter: time.Duration(vals[pos+1]) * time.Millisecond}
			pos += 2
		}
		results[i] = res
	}
	return results, vals[0] == 1, nil
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

// Commit implements Store in one round trip.
func (r *Redis) Commit(ctx context.Context, id string, now time.Time, parts []Part) error {
	if err := checkParts(parts); err != nil {
		return err
	}
	var keys keyArgs
	args := make([]any, 0, 4+7*len(parts))
	args = append(args, now.UnixMilli(), id, len(parts), r.opts.maxRemembered)
	for _, p := range parts {
		seen, hash, remember := 0, "", int64(0)
		if remembers(p.Counter, p.Recipient, p.Remember) {
			seen, hash, remember = keys.add(r.seenKey(p.Counter)), hashArg(p.Recipient), ceilMs(p.Remember)
		}
		args = append(args, p.Amount, len(p.Windows), seen, hash, remember)
		for _, w := range p.Windows {
			args = append(args, keys.add(r.winKey(p.Counter, w)), widthMs(w), spanOf(w))
		}
	}
	if len(keys.names) == 0 {
		return nil
	}
	if err := commitScript.Run(ctx, r.rdb, keys.names, args...).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Release implements Store in one round trip.
func (r *Redis) Release(ctx context.Context, id string, parts []Part) error {
	var keys keyArgs
	for _, p := range parts {
		for _, w := range p.Windows {
			keys.add(r.winKey(p.Counter, w))
		}
	}
	if len(keys.names) == 0 {
		return nil
	}
	if err := releaseScript.Run(ctx, r.rdb, keys.names, id).Err(); err != nil {
		return unavailable(err)
	}
	return nil
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
