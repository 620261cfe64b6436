"""prefix_aware, the default policy: weighted_score whose latency term is this request's
predicted time to first token on each backend, from what is queued there and how much of its
prompt is cached there.

    score = alpha * ttft_term + beta * queue_weight * queue_term   (lowest wins, ties at random)

    ttft_term  = (max(predicted_ttft_i, waiting_age_i) + stall_i) / median_latency
                 (measured_latency_i for waiting_age_i where the backend has no TTFT line or
                 is not answering)
    predicted_ttft_i = base_i + s_per_token_i * (prefill_queued_i + others_i + uncached_i)
    stall_i    = s_per_token_i * uncached_i * in_flight_i
    uncached_i = max(TOKENS_PER_BLOCK, prompt_tokens - cached_blocks_i * TOKENS_PER_BLOCK)
    queue_term = kv_i * (queue_depth_i / effective_weight_i) / max(1, median)
    kv_i       = 1 + 4 * max(0, kv_usage_i - 0.9) / 0.1       (KV cache nearly full: load)

  * ``base_i + s_per_token_i * tokens`` is the line fitted to the backend's measured TTFTs
    against the prefill queued ahead of them (``gateway.load.work``; the fleet's median line
    stands in before it is measured, so a 3x slower pod predicts 3x slower);
    ``prefill_queued_i`` the uncached prompt tokens this gateway sent there that have no first
    token yet; ``others_i`` the requests the backend reports beyond
    ours, at the mean prefill this gateway sends. The unit stays latency: the term is 1 for a
    typical answer of the fleet, so alpha and beta keep weighted_score's exchange rates.
  * ``stall_i``: what this request's prefill costs the requests already there. Continuous
    batching runs prefill in the same steps as their decode, so each of them waits about the
    prefill time for its next token. Counting only the request's own TTFT would spread a cache
    miss onto a busy backend to save a few milliseconds and stall a whole batch for it.
  * ``uncached_i`` never falls below one block: a fully cached prompt still has its partial
    last block and a first decode step to run, which a slower backend runs slower.
  * ``cached_blocks_i`` comes from the prefix index (``gateway.affinity``): the blocks this
    gateway sent to backend i recently, matched as a chained prefix.
  * ``kv_i``: a backend whose reported KV cache is nearly full (vLLM ``kv_cache_usage_perc``,
    SGLang ``token_usage``, scraped through ``gateway.load_reports``) preempts or queues new
    work, so above 90% usage each of its requests counts as up to 5.
  * ``waiting_age_i`` (the mean age of tries with no first event yet) makes a hung backend look
    slow as soon as its requests are older than its usual answers.
  * ``measured_latency_i`` is weighted_score's latency estimate (peak EWMA, the waiting age,
    failure penalties, the wait of tries that lost to their hedge). A backend whose answers
    are not streamed fits no TTFT line, and the fleet's prior line would predict a 4x slower
    pod, or one failing fast, like any other; its measured latency is the prediction there.

Not answering, no affinity. A backend whose latency estimate is at least ``OUTLIER_LATENCY``
(2) x the fleet's at the last refresh, or that has left a try unanswered that long
(``EndpointSignals.silent_s``, live, and counting tries that were cancelled or timed out), is
offered as no holder or home (a home hands over to its ring successor) and its cache is
credited nothing. Without this a hung home kept its prefix: once its hedges won, its tries
were cancelled, it held nothing in flight, and the scored prediction (the fleet's prior line)
made it the idlest backend of all. Silence withdraws only affinity, not scored as latency: an
idle backend whose last try its client cancelled is silent too, and is brought back by a
random draw's answer.

``queue_weight`` (``balancer.prefix.queue_weight``, 0.1): the request count keeps a tenth of
its weighted_score weight for a request with a prompt, because the TTFT term already counts
what delays this request there (the queued prefill, the batch it stalls), and a request that
is decoding costs a newcomer one decode slot per step (~0.3 ms of a 6.4 ms step on an
8B model), not a request's worth of latency. At full weight the count outbid the cache: in
the LLM harness's ``equal`` scenario (20 s), 8 of 56 follow-up turns left the backend that
held their whole history for an idle backend that held none of it (prefix hits 79%); at 0.1
none left (85%).

Which backends are scored (O(1) per pick, not a scan): the backends that hold the prompt's
deepest known block (at most ``MAX_HOLDERS``), the prefix's *home*, and one random backend
besides them as the way out when they are busy (two, as p2c, when nothing is known of the
prompt). With each option's load read once and ring walks cached, a pick at 1,000 backends
and a 4,000-token prompt went from 29-30 to 16.7 us (BENCHMARKS-prefix.md).

The home is the prefix's first ``HOME_BLOCKS`` blocks hashed onto a consistent-hash ring
(``gateway.affinity.ring``). It is the same on every gateway replica, so G replicas that each
see 1/G of the traffic still send a shared system prompt, and the turns that extend it, to the
same cache. Where this replica's own index knows no deeper holder than the home's blocks, the
home is credited with the whole prompt: every replica sends this prefix there, so its cache is
where the rest of the conversation most likely is (another replica routed the previous turns).
In the LLM fleet simulator at G = 8 replicas and M = 100 pods this took the pods' prefix hits
from 60% to 68% and TTFT p50 from 20.2 to 16.1 ms (against crediting only the home's blocks;
with the index alone, no home, 46% and 52 ms); at G = 1 the three are level (76-77%).
BENCHMARKS-prefix.md. A home measured to prefill ``SLOW_HOME`` times slower than the fleet is
not trusted so: a cold prompt sent there on trust is prefilled at its speed (LLM harness, one
pod 3x slower: TTFT p99 216 ms before, 89 ms with this rule and the trusted home).

The index learns from what was sent (``sent``, ``answered``), is bounded per backend by the KV
cache size the backend reports (vLLM's ``cache_config_info``, SGLang's
``max_total_num_tokens``; ``balancer.prefix.capacity_blocks`` otherwise), and forgets a
backend that leaves, is ejected or fails a try (``failed``).

Bounded load: a holder or a home is offered only while its load (requests per unit of
weight) is at most ``(1 + load_bound) * mean_load + 1`` (the +1 is the request being placed);
a home above it hands over to its ring successor, as consistent hashing with bounded loads
does. So affinity never piles a hot prefix onto one backend: at most a (1 + load_bound) share.
``load_bound`` is 1.0 by default (twice the mean load): at 0.25 a hot system prompt's holder
was over the bound after a request or two more than the mean, and its follow-ups moved to a
backend without their history (LLM harness, equal pods: follow-ups kept 93% vs 99%, prefix
hits 83% vs 88%; simulator, M = 100: hits 73% vs 75% at G = 1, 66% vs 68% at G = 8). The TTFT
term, not the bound, is what keeps work off a busy or slow backend.

Session affinity (``session_affinity``): a request with a session key goes, before any score,
to the first backend open to it (not failing, trusted, within the load bound) in the key's
rendezvous order over the prompt home's first ``SESSION_SPREAD`` (6) ring backends, the home
itself first; none open, it is scored as without a key. Every replica agrees on that order, so
a conversation stays on one backend while its system prompt is prefilled on at most six
caches. The key's own ring home, unrelated to its system prompt's, cost hits (LLM fleet
simulator, M = 100, a key per conversation: 62% vs plain prefix_aware's 76% at G = 1, 59% vs
67% at G = 8), and a key shared by a user's conversations spread them cold (TTFT p50 68-79
ms). Among the prompt home's six: hits 72% / 69% at G = 1 / 8, TTFT p50 14.0 / 14.9 ms (plain
12.8 / 16.4), and a shared key 14.5-15.3 ms. Fewer backends were over the bound more often for
a hot system prompt, whose conversations then moved (G = 8, four: p50 15.3-16.3 ms over three
seeds against 14.9-15.2); eight lost a point or two of hits. Off by default: on one gateway
the index alone does better (p50 12.8 vs 14.0 ms, hits 76% vs 72%). A prompt without a full
block has no prompt home: the key's own place on the ring. BENCHMARKS-prefix.md.

A request without prompt blocks (not JSON, no prompt, a tool) is scored as weighted_score.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics
from collections.abc import Sequence

from gateway.affinity import BLOCK_CHARS, CHARS_PER_TOKEN, HashRing, PrefixIndex, block_hashes
from gateway.balancer.base import Candidate, effective_weight, sample_two
from gateway.balancer.weighted_score import OUTLIER_LATENCY, WeightedScore
from gateway.request_info import RequestInfo
from gateway.request_parse import continued_prompt

TOKENS_PER_BLOCK = BLOCK_CHARS / CHARS_PER_TOKEN
HOME_BLOCKS = 4  # ~256 tokens: the opening of a system prompt decides where it lives
# Holders of the deepest block scored per pick: any of them holds it all, so two give a choice
# by load, and each one more costs a score (~3 us at 1,000 backends).
MAX_HOLDERS = 2
# Backends of a prompt home's ring walk (the home first) that its sessions are spread over
# (session_affinity): the system prompt is prefilled on at most this many caches. 1 to 8
# measured (BENCHMARKS-prefix.md): with fewer a hot prompt's few were over the load bound and
# its conversations moved; with eight, hits fell. At most RING_STEPS.
SESSION_SPREAD = 6
RING_STEPS = 8  # successors a home over its bound may hand over to, before giving up
# Ring walks remembered (key -> its first RING_STEPS backends, ~200 bytes each); cleared when full
# and when the membership changes. A pick then costs a dict lookup instead of a walk.
SUCCESSOR_CACHE = 4096
# A home whose prefill (its TTFT line's slope) is this many times the fleet median's is not
# trusted with a prompt it is not known to hold.
SLOW_HOME = 2.0
# How long a backend whose try failed is kept out of affinity, unless it answers first: about
# an ejection (the LLM benchmark's base_ejection_time is 10 s).
FAILED_AFFINITY_S = 10.0
# The prefill speed assumed before any backend of the fleet has been measured, as a share of
# the default latency per token: a 1,000-token prompt takes one default latency.
PRIOR_TOKENS_PER_DEFAULT_LATENCY = 1000.0
MEAN_PREFILL_SMOOTHING = 0.05
KV_PRESSURE_FROM = 0.9  # KV usage share above which the cache counts as pressure
KV_PRESSURE_WEIGHT = 4.0  # at 100% usage one request weighs 1 + this


class PrefixAware(WeightedScore):
    name = "prefix_aware"

    def __init__(
        self,
        alpha: float,
        beta: float,
        default_latency_s: float,
        capacity_blocks: int,
        load_bound: float,
        session_affinity: bool = False,
        queue_weight: float = 0.1,
        home_blocks: int = HOME_BLOCKS,
        trust_home: bool = True,
        max_blocks: int | None = None,
        session_spread: int = SESSION_SPREAD,
    ) -> None:
        super().__init__(alpha, beta, "p2c", default_latency_s)
        self.home_blocks = home_blocks  # 0: no home, the learnt index alone
        self.trust_home = trust_home  # credit the home with the whole prompt (see the docstring)
        self.index = PrefixIndex(capacity_blocks, max_blocks)
        self.load_bound = load_bound
        self.session_affinity = session_affinity
        self.session_spread = session_spread  # prompt-home successors a session may go to
        self.queue_weight = queue_weight
        self._ring = HashRing(())
        self._successors: dict[int, tuple[str, ...]] = {}  # ring key -> its first successors
        self._mean_load = 0.0
        self._load_limit = 1.0  # (1 + load_bound) * mean load + 1, per refresh
        self._per_latency_s = 0.0  # alpha / the fleet's latency, per refresh
        self._per_load = 0.0  # beta * queue_weight / the fleet's queue per weight, per refresh
        self._outlier_s = 0.0  # OUTLIER_LATENCY x the fleet's latency, per refresh
        self._unanswering: frozenset[str] = frozenset()  # estimate >= _outlier_s, per refresh
        self._fold_exchange_rates()
        self._prior_line = (0.0, default_latency_s / PRIOR_TOKENS_PER_DEFAULT_LATENCY)
        self._mean_prefill = 0.0  # tokens per request this gateway sends uncached
        self._allowed_of: Sequence[Candidate] | None = None  # the list _allowed was built from
        self._allowed: dict[str, Candidate] = {}
        self._reported_blocks: dict[str, int] = {}  # backend -> its KV cache size, in blocks
        self._failed_at: dict[str, float] = {}  # backend -> its last failed try, while recent

    # -- off the request path -----------------------------------------------------------------

    def refresh(self, candidates: Sequence[Candidate], now: float) -> None:
        """The fleet medians, the mean load, the ring; forgets backends that left or were
        ejected (their caches are gone or will be cold when they return), and bounds each
        backend's index by the KV cache size it reports."""
        super().refresh(candidates, now)
        self._fold_exchange_rates()
        typical_s, outlier_s = self._fleet.latency_s, self._outlier_s
        self._unanswering = frozenset(
            c.name for c in candidates if c.signals.latency_s(now, typical_s) >= outlier_s
        )
        names = {c.name for c in candidates}
        if names != set(self._ring.members):
            self._ring = HashRing(sorted(names))
            self._successors.clear()
        self.index.retain(names)
        self._failed_at = {
            b: at for b, at in self._failed_at.items() if now - at < FAILED_AFFINITY_S
        }
        reported = {
            c.name: round(tokens / TOKENS_PER_BLOCK)
            for c in candidates
            if (tokens := c.signals.cache_tokens) is not None
        }
        if reported != self._reported_blocks:
            self.index.set_capacities(reported)
            self._reported_blocks = reported
        if candidates:
            self._mean_load = statistics.fmean(
                q / w for q, w in (_load_of(c, now) for c in candidates)
            )
        self._load_limit = (1.0 + self.load_bound) * self._mean_load + 1.0
        lines = [line for c in candidates if (line := c.signals.work.line()) is not None]
        if lines:
            self._prior_line = (
                statistics.median(base for base, _ in lines),
                statistics.median(slope for _, slope in lines),
            )

    # -- the record path ----------------------------------------------------------------------

    def sent(self, backend: str, request: RequestInfo, learn: bool = True) -> int:
        """A try of ``request`` goes to ``backend``: returns the prompt tokens expected cached
        there, and (``learn``) records the prompt's blocks as cached there from now on.

        Only a request's first try learns at send: a hedge or a retry goes to another backend
        because the first was slow or failed, and if it learnt at once, two backends would
        claim the prompt and the loser (cancelled, perhaps before its prefill) could draw the
        next turn. The one that finishes the answer is learnt by :meth:`answered`."""
        blocks = request.blocks
        if not blocks:
            return 0
        cached = min(
            request.prompt_tokens,
            round(self.index.matched_blocks(backend, blocks) * TOKENS_PER_BLOCK),
        )
        if learn:
            self.index.record(backend, blocks)
        uncached = request.prompt_tokens - cached
        self._mean_prefill += MEAN_PREFILL_SMOOTHING * (uncached - self._mean_prefill)
        return cached

    def answered(self, backend: str, request: RequestInfo, answer: str) -> None:
        """``backend`` streamed ``answer`` to ``request``: its prefix cache now holds the prompt
        and the answer (vLLM and SGLang cache the generated blocks too), which is how the next
        turn of the conversation starts. Without this a follow-up matched only the previous
        prompt, so the backend that holds the whole history looked barely better than one that
        held only the system prompt, and sessions drifted off it."""
        if self._failed_at:
            self._failed_at.pop(backend, None)  # it answers again
        if not request.blocks or not answer:
            return
        # The prompt's blocks again too: a winning hedge or retry did not learn them at send.
        self.index.record(backend, block_hashes(continued_prompt(request, answer), request.model))

    def failed(self, backend: str, now: float) -> None:
        """A try at ``backend`` failed (a 5xx, a reset, a timeout): its index entries go, and
        affinity does not offer it (as a holder or a home) until it streams an answer whole
        or ``FAILED_AFFINITY_S`` pass. Otherwise the sessions it held would keep drawing their
        next turns to it until it is ejected (``outlier_detection.consecutive_5xx`` failures
        later), each turn failing and retried cold elsewhere; and, its index forgotten, a
        fast-failing home would look like an idle backend trusted with the whole prompt.
        Random draws may still send it work, which is how a recovered backend comes back."""
        self.index.forget(backend)
        self._failed_at[backend] = now

    def prefix_snapshot(self, backend: str) -> dict[str, int]:
        """For /admin/backends: the blocks recorded against ``backend`` and its bound."""
        return {
            "blocks": self.index.blocks_held(backend),
            "capacity_blocks": self.index.capacity_of(backend),
        }

    # -- the pick -----------------------------------------------------------------------------

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        if request is None or len(candidates) == 1:
            return super().pick(candidates, now, rng, request)
        blocks = request.blocks
        session = request.session if self.session_affinity else None
        if not blocks and not session:  # a plain request: weighted_score's pick, nothing more
            return super().pick(candidates, now, rng, request)
        allowed = self._allowed_for(candidates)
        if session:
            session_home = self._session_home(session, blocks, allowed, now)
            if session_home is not None:
                return session_home
        if not blocks:
            return super().pick(candidates, now, rng, request)
        index = self.index
        # name -> (backend, cached blocks, queue depth, effective weight): each backend's load
        # is read once per pick, for the bound and for the score.
        options: dict[str, tuple[Candidate, int, float, float]] = {}
        depth, holders = index.deepest_holders(blocks)
        for name in itertools.islice(holders, MAX_HOLDERS):
            open_holder = self._first_open((name,), allowed, now)
            if open_holder is not None:
                holder, queued, weight = open_holder
                options[name] = (holder, depth, queued, weight)
        if self.home_blocks > 0:
            home_blocks = min(len(blocks), self.home_blocks)
            found = self._home(self._prompt_home_key(blocks), allowed, now)
            if found is not None:
                home, queued, weight = found
                trusted = self.trust_home and depth <= home_blocks and not self._slow(home)
                credit = len(blocks) if trusted else home_blocks
                known = options[home.name][1] if home.name in options else 0
                options[home.name] = (home, max(known, credit), queued, weight)
        # The random draws keep load spread: two (p2c) when nothing is known of the prompt,
        # one beside the backends that hold it, as the way out when they are slow (another
        # than them: the next in the list when the draw is one of them).
        n = len(candidates)
        if options:
            i = rng.randrange(n)
            draws: Sequence[Candidate] = (candidates[i],)
            if draws[0].name in options:
                draws = (candidates[(i + 1) % n],)
        else:
            i, j = sample_two(n, rng)
            draws = (candidates[i], candidates[j])
        for drawn in draws:
            if drawn.name not in options:
                queued, weight = _load_of(drawn, now)
                matched = index.matched_blocks(drawn.name, blocks)
                if matched and self._distrusted(drawn, now):
                    matched = 0  # its cache is worth nothing while it does not answer
                options[drawn.name] = (drawn, matched, queued, weight)
        best: Candidate | None = None
        best_cost = 0.0
        for option, cached_blocks, queued, weight in options.values():
            cost = self._cost(option, request, cached_blocks, now, queued, weight)
            if best is None or cost < best_cost or (cost == best_cost and rng.random() < 0.5):
                best, best_cost = option, cost
        assert best is not None
        return best

    def request_cost(
        self, candidate: Candidate, request: RequestInfo, cached_blocks: int, now: float
    ) -> float:
        """The score of ``candidate`` for ``request`` if it holds ``cached_blocks`` of it."""
        queued, weight = _load_of(candidate, now)
        if self._distrusted(candidate, now):
            cached_blocks = 0  # its cache is worth nothing while it does not answer
        return self._cost(candidate, request, cached_blocks, now, queued, weight)

    def _cost(
        self,
        candidate: Candidate,
        request: RequestInfo,
        cached_blocks: int,
        now: float,
        depth: float,
        weight: float,
    ) -> float:
        """:meth:`request_cost` with the backend's queue depth and effective weight read, and
        ``cached_blocks`` already 0 for a backend that is not trusted (:meth:`_distrusted`)."""
        # Written for the hot path (called for each of up to four options per pick): the
        # exchange rates are folded once per refresh, and conditionals stand in for max().
        signals = candidate.signals
        work = signals.work
        uncached = request.prompt_tokens - cached_blocks * TOKENS_PER_BLOCK
        if uncached < TOKENS_PER_BLOCK:
            uncached = TOKENS_PER_BLOCK
        in_flight = signals.in_flight
        others = (depth - in_flight) * self._mean_prefill if depth > in_flight else 0.0
        line = work.line()
        base_s, s_per_token = line or self._prior_line
        latency_s = base_s + s_per_token * (work.prefill_tokens + others + uncached)
        if (line is None and signals.has_latency) or candidate.name in self._unanswering:
            # No first token measured there (answers not streamed), or not answering: what it
            # was measured to take is the best prediction, as weighted_score's latency term.
            measured_s = signals.latency_s(now, self._fleet.latency_s)
            if measured_s > latency_s:
                latency_s = measured_s
        else:
            waiting_s = signals.waiting_age_s(now)
            if waiting_s > latency_s:
                latency_s = waiting_s
        latency_s += s_per_token * uncached * in_flight  # the stall
        load = depth / weight
        kv = signals.kv_usage(now)
        if kv > KV_PRESSURE_FROM:
            load *= 1.0 + KV_PRESSURE_WEIGHT * (kv - KV_PRESSURE_FROM) / (1.0 - KV_PRESSURE_FROM)
        return self._per_latency_s * latency_s + self._per_load * load

    # -- helpers --------------------------------------------------------------------------------

    def _fold_exchange_rates(self) -> None:
        """The score's two exchange rates with the fleet's references folded in."""
        fleet = self._fleet
        self._per_latency_s = self.alpha / fleet.latency_s
        self._per_load = self.beta * self.queue_weight / max(1.0, fleet.queue_per_weight)
        self._outlier_s = OUTLIER_LATENCY * fleet.latency_s  # see _distrusted

    def _allowed_for(self, candidates: Sequence[Candidate]) -> dict[str, Candidate]:
        """Name -> candidate for this pick's candidates; rebuilt only when the list object
        changes (the fleet hands the same cached list until membership or health changes)."""
        if candidates is not self._allowed_of:
            self._allowed = {c.name: c for c in candidates}
            self._allowed_of = candidates
        return self._allowed

    def _home(
        self, key: int, allowed: dict[str, Candidate], now: float
    ) -> tuple[Candidate, float, float] | None:
        """The first backend from ``key``'s place on the ring that may take it within the
        load bound and is trusted, with its queue depth and effective weight (None when the
        first ``RING_STEPS`` may not)."""
        return self._first_open(self._walk(key), allowed, now)

    def _session_home(
        self, session: str, blocks: Sequence[int], allowed: dict[str, Candidate], now: float
    ) -> Candidate | None:
        """Where the conversation keyed ``session`` goes before any score: the first open
        backend in the key's rendezvous order over the first ``session_spread`` backends of
        the prompt home's ring walk (the home first; at most ``RING_STEPS``), so the system
        prompt is prefilled on at most that many caches (None when none is open: the pick
        scores). A prompt without a full block has no prompt home: the key's own place on
        the ring, walked ``RING_STEPS`` on."""
        key = _key(session.encode())
        if not blocks or self.home_blocks <= 0:
            found = self._home(key, allowed, now)
            return None if found is None else found[0]
        spread = self._walk(self._prompt_home_key(blocks))[: self.session_spread]
        found = self._first_open(self._ring.rendezvous(key, spread), allowed, now)
        return None if found is None else found[0]

    def _prompt_home_key(self, blocks: Sequence[int]) -> int:
        """The ring key of a prompt's home: its first ``home_blocks`` blocks' chained hash."""
        return blocks[min(len(blocks), self.home_blocks) - 1]

    def _walk(self, key: int) -> tuple[str, ...]:
        """The first ``RING_STEPS`` backends from ``key``'s place on the ring, cached."""
        successors = self._successors.get(key)
        if successors is None:
            if len(self._successors) >= SUCCESSOR_CACHE:
                self._successors.clear()
            successors = tuple(itertools.islice(self._ring.walk(key), RING_STEPS))
            self._successors[key] = successors
        return successors

    def _first_open(
        self, names: Sequence[str], allowed: dict[str, Candidate], now: float
    ) -> tuple[Candidate, float, float] | None:
        """The first of ``names`` that is a candidate, not failing, trusted and within the
        load bound, with its queue depth and effective weight."""
        limit = self._load_limit
        failed_at = self._failed_at
        for name in names:
            c = allowed.get(name)
            if c is None or (failed_at and self._failing(name, now)):
                continue
            if self._distrusted(c, now):
                continue
            queued, weight = _load_of(c, now)
            if queued <= limit * weight:
                return c, queued, weight
        return None

    def _slow(self, candidate: Candidate) -> bool:
        """Measured to prefill slower than ``SLOW_HOME`` x the fleet's median: a bet on its
        cache would put a cold prompt's whole prefill there at that speed."""
        line = candidate.signals.work.line()
        return line is not None and line[1] > SLOW_HOME * self._prior_line[1]

    def _distrusted(self, candidate: Candidate, now: float) -> bool:
        """Its signals say it is not answering: offered as no holder or home, and its cache
        credited nothing. That is, at the last refresh its latency estimate (which counts
        the age of tries waiting for their first byte, the tries that lost to their hedge and
        failure penalties) was at least ``OUTLIER_LATENCY`` x the fleet's, or, live, it has
        left a try unanswered that long (``silent_s``: even one that ended, cancelled or timed
        out). Otherwise a hung home keeps its prefix: its hedged tries are cancelled, so it
        soon holds nothing in flight and looks like the idlest home of all. Silence withdraws
        only affinity and is not scored as latency: an idle backend whose last try its client
        cancelled is silent too, and must stay reachable by the random draws, whose answer
        clears it."""
        if candidate.name in self._unanswering:
            return True
        since = candidate.signals.unanswered_since  # silent_s, without a call on the hot path
        return since is not None and now - since >= self._outlier_s

    def _failing(self, backend: str, now: float) -> bool:
        at = self._failed_at.get(backend)
        return at is not None and now - at < FAILED_AFFINITY_S


def _load_of(candidate: Candidate, now: float) -> tuple[float, float]:
    """The backend's queue depth and effective weight (its load is their ratio)."""
    return candidate.signals.queue_depth(now), effective_weight(candidate, now)


def _key(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
