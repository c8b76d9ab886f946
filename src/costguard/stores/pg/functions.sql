-- costguard on PostgreSQL: reserve and settle as server functions, installed with the schema.
--
-- They carry out the engine's atomic steps (engine.evaluate_reserve, claim_crossings,
-- clear_previous, settle_deltas) exactly as stores/lua/*.lua do on Redis, inside the server: a
-- guarded call is one statement in autocommit, and a hot counter row is locked for the
-- microseconds the function runs, never across a client's round trips.
--
-- `{p}` is the store's validated table prefix. Money is integer micro-dollars (bigint).
-- A counter's `fired` column: comma-separated `<threshold>@<limit when it fired>` entries, plus
-- `cleared` once the kill claimed in its period was cleared by the next period's first call.
-- Crossings go back as flat quadruples: counter index, level index (both from 1), total, kind
-- (0 crossed, 1 cleared because the limit was raised, 2 cleared because a new period began).

CREATE OR REPLACE FUNCTION {p}fired_text(fired text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(string_agg(e, ',' ORDER BY e COLLATE "C"), '') FROM unnest(fired) AS e
$$;

-- engine.claim_crossings over `levels` ([[name, level, is_limit_threshold], ...]).
CREATE OR REPLACE FUNCTION {p}claim(
  levels jsonb, lim bigint, total bigint, fired text[], blocked boolean, i integer,
  INOUT crossings jsonb, OUT new_fired text[], OUT changed boolean)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  j integer := 0;
  level jsonb;
  name text;
  lvl bigint;
  top boolean;
  entry text;
  claimed text;
  claimed_limit bigint;
BEGIN
  new_fired := fired;
  changed := false;
  FOR level IN SELECT value FROM jsonb_array_elements(levels) LOOP
    j := j + 1;
    name := level->>0;
    lvl := (level->>1)::bigint;
    top := (level->>2)::boolean;
    claimed := NULL;
    FOREACH entry IN ARRAY new_fired LOOP
      IF entry <> 'cleared' AND split_part(entry, '@', 1) = name THEN
        claimed := entry;
      END IF;
    END LOOP;
    IF claimed IS NOT NULL THEN
      claimed_limit := CASE WHEN split_part(claimed, '@', 2) <> '' THEN split_part(claimed, '@', 2)::bigint
                            ELSE 4611686018427387904 END;
      IF lim > claimed_limit AND total < lvl AND NOT (blocked AND top) THEN
        new_fired := array_remove(new_fired, claimed);
        changed := true;
        IF top THEN
          crossings := crossings || jsonb_build_array(i, j, total, 1);
        END IF;
      END IF;
    ELSIF (total > 0 AND total >= lvl) OR (blocked AND top) THEN
      new_fired := new_fired || (name || '@' || lim::text);
      changed := true;
      crossings := crossings || jsonb_build_array(i, j, total, 0);
    END IF;
  END LOOP;
END $$;

-- A counter's value as the audit log shows it (engine.CounterOp.display).
CREATE OR REPLACE FUNCTION {p}shown(value bigint, unit text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN unit = 'usd' THEN to_jsonb(round(value::numeric / 1000000, 6)) ELSE to_jsonb(value::float8) END
$$;

-- engine.ceilings_data: each reported counter of an allowed reserve with its total after it and its limit.
CREATE OR REPLACE FUNCTION {p}ceilings(ops jsonb, totals bigint[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
      'scope', coalesce((SELECT jsonb_object_agg(e->>0, e->>1)
                         FROM jsonb_array_elements((o.value->>'scope')::jsonb) AS e), '{}'::jsonb),
      'period', o.value->>'period',
      'unit', o.value->>'unit',
      'spent', {p}shown(totals[o.ord::integer], o.value->>'unit'),
      'limit', {p}shown((o.value->>'limit')::bigint, o.value->>'unit')) ORDER BY o.ord), '[]'::jsonb)
  FROM jsonb_array_elements(ops) WITH ORDINALITY AS o(value, ord)
  WHERE coalesce((o.value->>'reported')::boolean, false)
$$;

-- engine.reserve_record: the audit line of a reserve; a refusal is written as `blocked` with the
-- ceiling that refused it (`op`, its counter as the reserve function takes it with the refusal's
-- `reason` when it is not `budget_exceeded`, and its total); an
-- allowed one gets `ceilings` ({p}ceilings) from the caller.
CREATE OR REPLACE FUNCTION {p}audit(rec jsonb, blocked integer, op jsonb, total bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_decision text;
  v_data text;
BEGIN
  IF rec IS NULL OR jsonb_typeof(rec) <> 'object' THEN
    RETURN;
  END IF;
  v_decision := rec->>'decision';
  v_data := rec->>'data';
  IF blocked > 0 THEN
    v_decision := 'blocked';
    v_data := ((rec->>'data')::jsonb || jsonb_build_object(
      'reason', coalesce(op->>'reason', 'budget_exceeded'),
      'scope', coalesce((SELECT jsonb_object_agg(e->>0, e->>1) FROM jsonb_array_elements((op->>'scope')::jsonb) AS e),
                        '{}'::jsonb),
      'period', op->>'period',
      'unit', op->>'unit',
      'spent', {p}shown(total, op->>'unit'),
      'limit', {p}shown((op->>'limit')::bigint, op->>'unit')))::text;
  END IF;
  INSERT INTO {p}events (at, decision, feature, customer, reservation_id, labels, data)
    VALUES ((rec->>'at')::float8, v_decision, rec->>'feature', rec->>'customer', rec->>'reservation_id',
            rec->>'labels', v_data);
END $$;

-- doc: {id, at, force, ops (the reservation's counters as stored), record (an events row, or null),
--       counters: [{key, ceiling_id, scope, period, unit, bucket, amount, limit, hard, levels,
--                   expires_at, previous_key, counts_new, reported, ttl (seconds, or null)}, ...] in key order}
-- Returns {allowed, blocked (counter index from 1, 0 none), expired (the blocked counter's ttl ran out),
--          totals, crossings, repeat, and for an allowed slice (id `lease-…`) holders: each counter's
--          live slices after it}.
CREATE OR REPLACE FUNCTION {p}reserve(doc jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  rid text := doc->>'id';
  v_at float8 := (doc->>'at')::float8;
  force boolean := (doc->>'force')::boolean;
  ops jsonb := doc->'counters';
  n integer := jsonb_array_length(doc->'counters');
  op jsonb;
  i integer;
  j integer;
  v_committed bigint;
  v_reserved bigint;
  v_fired text;
  v_created boolean;
  v_first float8;
  a_first float8[] := '{}';
  expired boolean := false;
  quiet boolean;
  a_committed bigint[] := '{}';
  a_reserved bigint[] := '{}';
  a_fired text[] := '{}';
  a_created boolean[] := '{}';
  a_amount bigint[] := '{}';
  totals bigint[] := '{}';
  crossings jsonb := '[]'::jsonb;
  blocked integer := 0;
  total bigint;
  amount bigint;
  lim bigint;
  prev_set text[];
  level jsonb;
  claimed record;
  -- A slice (engine.leases): its counters count it in `leased` and `holders` until it is settled.
  lease boolean := left(rid, 6) = 'lease-';
  v_holders bigint;
  a_holders bigint[] := '{}';
BEGIN
  -- A refusal needs no lock: when a consistent snapshot already shows a hard counter without room,
  -- and refusing claims no threshold that isn't claimed yet, the call is refused as of that
  -- snapshot, exactly as a locked check at that moment would have refused it. Once a hot feature's
  -- cap is reached its refusals don't queue behind the counter's row lock.
  IF NOT force AND NOT EXISTS (SELECT 1 FROM {p}reservations WHERE id = rid) THEN
    FOR i IN 1..n LOOP
      op := ops->(i - 1);
      SELECT c.committed, c.reserved, c.fired, c.first_at INTO v_committed, v_reserved, v_fired, v_first
        FROM {p}counters AS c WHERE c.key = op->>'key';
      EXIT WHEN NOT FOUND;  -- a new counter: the locked path creates it
      a_committed := a_committed || v_committed;
      a_reserved := a_reserved || v_reserved;
      a_fired := a_fired || v_fired;
      -- engine.ttl_ran_out: a counter past its ttl refuses before any limit is checked.
      IF NOT expired AND op->>'ttl' IS NOT NULL AND v_first IS NOT NULL AND v_at >= v_first + (op->>'ttl')::float8 THEN
        expired := true;
        blocked := i;
      END IF;
      IF blocked = 0 AND (op->>'hard')::boolean THEN
        total := v_committed + v_reserved;
        -- Every counter exists on this path: a registry counter adds nothing (no new instance) and
        -- so never refuses; a known instance passes a full registry.
        IF (op->>'counts_new')::integer <= 0 AND NOT (total + (op->>'amount')::bigint <= (op->>'limit')::bigint
                                                     AND total < (op->>'limit')::bigint) THEN
          blocked := i;
        END IF;
      END IF;
    END LOOP;
    IF blocked > 0 AND coalesce(array_length(a_committed, 1), 0) = n THEN
      op := ops->(blocked - 1);
      quiet := expired;  -- an expiry is not a full ceiling: its refusal claims no kill
      IF NOT expired THEN
        SELECT * INTO claimed FROM {p}claim(op->'levels', (op->>'limit')::bigint,
          a_committed[blocked] + a_reserved[blocked], string_to_array(a_fired[blocked], ','), true, blocked, crossings);
        quiet := NOT claimed.changed;
      END IF;
      IF quiet THEN
        -- Nothing but the audit line is written: it need not wait for the WAL flush.
        PERFORM set_config('synchronous_commit', 'off', true);
        FOR i IN 1..n LOOP
          totals := totals || (a_committed[i] + a_reserved[i]);
        END LOOP;
        PERFORM {p}audit(doc->'record', blocked,
                         CASE WHEN expired THEN op || '{"reason": "expired"}'::jsonb ELSE op END,
                         a_committed[blocked] + a_reserved[blocked]);
        RETURN jsonb_build_object('allowed', false, 'blocked', blocked, 'expired', expired, 'totals', to_jsonb(totals),
                                  'crossings', '[]'::jsonb, 'repeat', false, 'quiet', true);
      END IF;
    END IF;
    blocked := 0;
    expired := false;
    a_committed := '{}';
    a_reserved := '{}';
    a_fired := '{}';
  END IF;

  -- The reservation row first: a reserve asked again (a reply lost to a timeout, a spooled cost
  -- written twice) or released before it arrived finds it, waiting for a concurrent first attempt
  -- to end, and the first outcome stands.
  INSERT INTO {p}reservations (id, at, settled, counters) VALUES (rid, (doc->>'at')::float8, false, doc->>'ops')
    ON CONFLICT (id) DO NOTHING;
  IF NOT FOUND THEN
    IF force THEN
      RETURN jsonb_build_object('allowed', true, 'repeat', true, 'blocked', 0, 'totals', '[]'::jsonb,
                                'crossings', '[]'::jsonb);
    END IF;
    RETURN jsonb_build_object('allowed', true, 'repeat', true, 'blocked', 0, 'crossings', '[]'::jsonb,
      'totals', coalesce((SELECT jsonb_agg(coalesce(c.committed + c.reserved, 0) ORDER BY o.ord)
                          FROM jsonb_array_elements(ops) WITH ORDINALITY AS o(value, ord)
                          LEFT JOIN {p}counters AS c ON c.key = o.value->>'key'), '[]'::jsonb));
  END IF;

  -- Create missing counters, then lock and read every counter, in key order.
  FOR i IN 1..n LOOP
    op := ops->(i - 1);
    INSERT INTO {p}counters AS c (key, ceiling_id, scope, period, unit, bucket, committed, reserved, fired, expires_at)
      VALUES (op->>'key', op->>'ceiling_id', op->>'scope', op->>'period', op->>'unit', op->>'bucket', 0, 0, '',
              (op->>'expires_at')::float8)
      ON CONFLICT (key) DO UPDATE SET committed = c.committed
      RETURNING c.committed, c.reserved, c.fired, (c.xmax = 0), c.first_at
      INTO v_committed, v_reserved, v_fired, v_created, v_first;
    a_committed := a_committed || v_committed;
    a_reserved := a_reserved || v_reserved;
    a_fired := a_fired || v_fired;
    a_created := a_created || v_created;
    a_first := array_append(a_first, v_first);
  END LOOP;

  -- engine.clear_previous: a new counter clears a kill its previous period claimed, once.
  FOR i IN 1..n LOOP
    op := ops->(i - 1);
    IF a_created[i] AND op->>'previous_key' IS NOT NULL THEN
      SELECT c.committed, c.reserved, c.fired INTO v_committed, v_reserved, v_fired
        FROM {p}counters AS c WHERE c.key = op->>'previous_key' FOR UPDATE;
      IF FOUND AND v_fired <> '' THEN
        prev_set := string_to_array(v_fired, ',');
        IF NOT ('cleared' = ANY (prev_set)) THEN
          j := 0;
          FOR level IN SELECT value FROM jsonb_array_elements(op->'levels') LOOP
            j := j + 1;
            IF (level->>2)::boolean AND EXISTS (
                SELECT 1 FROM unnest(prev_set) AS e WHERE e <> 'cleared' AND split_part(e, '@', 1) = level->>0) THEN
              UPDATE {p}counters SET fired = {p}fired_text(prev_set || 'cleared'::text) WHERE key = op->>'previous_key';
              crossings := crossings || jsonb_build_array(i, j, v_committed + v_reserved, 2);
              EXIT;
            END IF;
          END LOOP;
        END IF;
      END IF;
    END IF;
  END LOOP;

  -- engine.effective_amounts: a registry counter (max_instances) adds 1 when the instance counter it
  -- watches was created just now, else 0.
  FOR i IN 1..n LOOP
    op := ops->(i - 1);
    IF (op->>'counts_new')::integer > 0 THEN
      a_amount := a_amount || (CASE WHEN a_created[(op->>'counts_new')::integer] THEN 1 ELSE 0 END)::bigint;
    ELSE
      a_amount := a_amount || (op->>'amount')::bigint;
    END IF;
  END LOOP;

  -- engine.evaluate_reserve: no counter past its ttl (engine.ttl_ran_out), and every hard counter must fit,
  -- else nothing changes.
  IF NOT force THEN
    FOR i IN 1..n LOOP
      op := ops->(i - 1);
      IF op->>'ttl' IS NOT NULL AND a_first[i] IS NOT NULL AND v_at >= a_first[i] + (op->>'ttl')::float8 THEN
        blocked := i;
        expired := true;
        EXIT;
      END IF;
    END LOOP;
  END IF;
  IF NOT force AND NOT expired THEN
    FOR i IN 1..n LOOP
      op := ops->(i - 1);
      IF (op->>'hard')::boolean THEN
        total := a_committed[i] + a_reserved[i];
        amount := a_amount[i];
        lim := (op->>'limit')::bigint;
        -- A registry counter checks only a new instance: known instances pass a full registry.
        IF ((op->>'counts_new')::integer <= 0 OR amount > 0) AND NOT (total + amount <= lim AND total < lim) THEN
          blocked := i;
          EXIT;
        END IF;
      END IF;
    END LOOP;
  END IF;

  IF blocked > 0 THEN
    op := ops->(blocked - 1);
    total := a_committed[blocked] + a_reserved[blocked];
    IF NOT expired THEN  -- an expiry is not a full ceiling: its refusal claims no kill
      SELECT * INTO claimed FROM {p}claim(op->'levels', (op->>'limit')::bigint, total,
        string_to_array(a_fired[blocked], ','), true, blocked, crossings);
      crossings := claimed.crossings;
      IF claimed.changed THEN
        UPDATE {p}counters SET fired = {p}fired_text(claimed.new_fired) WHERE key = op->>'key';
      END IF;
    END IF;
    FOR i IN 1..n LOOP
      totals := totals || (a_committed[i] + a_reserved[i]);
      -- A refusal leaves no counter behind but the one that refused (its kill is claimed there).
      IF a_created[i] AND i <> blocked THEN
        DELETE FROM {p}counters WHERE key = ops->(i - 1)->>'key';
      END IF;
    END LOOP;
    DELETE FROM {p}reservations WHERE id = rid;
  ELSE
    FOR i IN 1..n LOOP
      op := ops->(i - 1);
      amount := a_amount[i];
      total := a_committed[i] + a_reserved[i] + amount;
      totals := totals || total;
      v_fired := a_fired[i];
      IF jsonb_array_length(op->'levels') > 0
         AND (a_fired[i] <> '' OR (total > 0 AND total >= (op->'levels'->0->>1)::bigint)) THEN
        SELECT * INTO claimed FROM {p}claim(op->'levels', (op->>'limit')::bigint, total,
          string_to_array(a_fired[i], ','), false, i, crossings);
        crossings := claimed.crossings;
        IF claimed.changed THEN
          v_fired := {p}fired_text(claimed.new_fired);
        END IF;
      END IF;
      v_holders := 0;  -- a registry is never part of a slice
      IF (op->>'counts_new')::integer > 0 THEN
        -- A registry counts instances for good: committed at once, never settled.
        UPDATE {p}counters SET committed = committed + amount, fired = v_fired,
                               expires_at = (op->>'expires_at')::float8
          WHERE key = op->>'key';
      ELSIF lease THEN
        UPDATE {p}counters SET reserved = reserved + amount, fired = v_fired,
                               expires_at = (op->>'expires_at')::float8,
                               first_at = CASE WHEN op->>'ttl' IS NULL THEN first_at ELSE coalesce(first_at, v_at) END,
                               leased = coalesce(leased, 0) + amount, holders = coalesce(holders, 0) + 1
          WHERE key = op->>'key' RETURNING {p}counters.holders INTO v_holders;
      ELSE
        -- A ttl counter's first admitted call starts its ttl.
        UPDATE {p}counters SET reserved = reserved + amount, fired = v_fired,
                               expires_at = (op->>'expires_at')::float8,
                               first_at = CASE WHEN op->>'ttl' IS NULL THEN first_at ELSE coalesce(first_at, v_at) END
          WHERE key = op->>'key';
      END IF;
      IF lease THEN
        a_holders := a_holders || v_holders;
      END IF;
    END LOOP;
  END IF;

  IF blocked > 0 THEN
    op := ops->(blocked - 1);
    PERFORM {p}audit(doc->'record', blocked, CASE WHEN expired THEN op || '{"reason": "expired"}'::jsonb ELSE op END,
                     a_committed[blocked] + a_reserved[blocked]);
  ELSIF jsonb_typeof(doc->'record') = 'object' THEN
    PERFORM {p}audit(jsonb_set(doc->'record', '{data}', to_jsonb((((doc->'record')->>'data')::jsonb
      || jsonb_build_object('ceilings', {p}ceilings(ops, totals)))::text)), 0, NULL, 0);
  END IF;

  RETURN jsonb_build_object('allowed', blocked = 0, 'blocked', blocked, 'expired', expired, 'totals', to_jsonb(totals),
                            'crossings', crossings, 'repeat', false, 'holders', to_jsonb(a_holders));
END $$;

-- doc: {id, at, actual ({usd, calls, tokens}, or null to release), record (an events row, or null)}
-- Returns {applied, totals, crossings, counters (the reservation's, as stored)}.
CREATE OR REPLACE FUNCTION {p}settle(doc jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  rid text := doc->>'id';
  v_at float8 := (doc->>'at')::float8;
  actual jsonb := doc->'actual';
  stored text;
  ops jsonb;
  op jsonb;
  n integer;
  i integer;
  amount bigint;
  d_committed bigint;
  v_committed bigint;
  v_reserved bigint;
  v_fired text;
  total bigint;
  totals bigint[] := '{}';
  crossings jsonb := '[]'::jsonb;
  levels jsonb;
  claimed record;
  rec jsonb;
  lease boolean := left(rid, 6) = 'lease-';  -- a slice's: it leaves `leased` and `holders` (never below 0)
BEGIN
  -- Claim the reservation: a second settle finds it settled and changes nothing.
  LOOP
    UPDATE {p}reservations SET settled = true, at = v_at WHERE id = rid AND NOT settled RETURNING counters INTO stored;
    EXIT WHEN FOUND;
    IF actual IS NOT NULL AND jsonb_typeof(actual) <> 'null' THEN
      RETURN jsonb_build_object('applied', false);
    END IF;
    -- A release of a reserve never stored: a tombstone, so that reserve arriving late does nothing.
    INSERT INTO {p}reservations (id, at, settled, counters) VALUES (rid, v_at, true, '[]') ON CONFLICT (id) DO NOTHING;
    IF FOUND OR EXISTS (SELECT 1 FROM {p}reservations WHERE id = rid AND settled) THEN
      RETURN jsonb_build_object('applied', false);
    END IF;
    -- The reserve itself was in flight (a late one: its reply was lost and the server ran it only
    -- now) and committed while the tombstone waited on its row: claim and release what it stored.
  END LOOP;
  ops := stored::jsonb;
  n := jsonb_array_length(ops);
  -- Each op is engine.op_to_json plus its level names: [key, ceiling_id, scope, period, unit, bucket,
  -- amount, limit, hard, levels, resets_at, expires_at, previous_key, names].
  FOR i IN 1..n LOOP
    op := ops->(i - 1);
    amount := (op->>6)::bigint;
    IF actual IS NULL OR jsonb_typeof(actual) = 'null' THEN
      d_committed := 0;
    ELSE
      d_committed := coalesce((actual->>(op->>4))::bigint, amount);
    END IF;
    INSERT INTO {p}counters AS c (key, ceiling_id, scope, period, unit, bucket, committed, reserved, fired, expires_at)
      VALUES (op->>0, op->>1, (op->2)::text, op->>3, op->>4, op->>5, 0, 0, '', (op->>11)::float8)
      ON CONFLICT (key) DO UPDATE SET committed = c.committed
      RETURNING c.committed, c.reserved, c.fired INTO v_committed, v_reserved, v_fired;
    v_committed := v_committed + d_committed;
    v_reserved := v_reserved - amount;
    total := v_committed + v_reserved;
    totals := totals || total;
    -- Level names as engine.fired_name wrote them (computed for rows stored before names were kept).
    SELECT coalesce(jsonb_agg(jsonb_build_array(
                      coalesce(op->13->(l.ord::integer - 1),
                               to_jsonb(rtrim(rtrim(to_char((l.value->>0)::numeric, 'FM999990.999999'), '0'), '.'))),
                      l.value->1, (l.value->>0)::float8 >= 1.0) ORDER BY l.ord), '[]'::jsonb)
      INTO levels FROM jsonb_array_elements(op->9) WITH ORDINALITY AS l(value, ord);
    SELECT * INTO claimed FROM {p}claim(levels, (op->>7)::bigint, total, string_to_array(v_fired, ','), false, i,
                                        crossings);
    crossings := claimed.crossings;
    IF claimed.changed THEN
      v_fired := {p}fired_text(claimed.new_fired);
    END IF;
    UPDATE {p}counters SET committed = v_committed, reserved = v_reserved, fired = v_fired,
                           expires_at = (op->>11)::float8,
                           leased = CASE WHEN lease THEN greatest(0, coalesce(leased, 0) - amount) ELSE leased END,
                           holders = CASE WHEN lease THEN greatest(0, coalesce(holders, 0) - 1) ELSE holders END
      WHERE key = op->>0;
  END LOOP;
  rec := doc->'record';
  IF rec IS NOT NULL AND jsonb_typeof(rec) = 'object' THEN
    INSERT INTO {p}events (at, decision, feature, customer, reservation_id, labels, data)
      VALUES ((rec->>'at')::float8, rec->>'decision', rec->>'feature', rec->>'customer', rec->>'reservation_id',
              rec->>'labels', rec->>'data');
  END IF;
  RETURN jsonb_build_object('applied', true, 'totals', to_jsonb(totals), 'crossings', crossings, 'counters', ops);
END $$;

-- Several reserves of one process on the same counters (stores/_combine.py), each its own atomic step,
-- in order, in one transaction: the counter rows are locked once for the batch. A quiet refusal lets
-- its transaction skip the WAL flush; a batch that wrote anything else flushes as usual.
CREATE OR REPLACE FUNCTION {p}reserve_many(docs jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  sync text := current_setting('synchronous_commit');
  replies jsonb := '[]'::jsonb;
  reply jsonb;
  quiet boolean := true;
  d jsonb;
BEGIN
  FOR d IN SELECT value FROM jsonb_array_elements(docs) LOOP
    reply := {p}reserve(d);
    quiet := quiet AND coalesce((reply->>'quiet')::boolean, false);
    replies := replies || jsonb_build_array(reply);
  END LOOP;
  IF NOT quiet THEN
    PERFORM set_config('synchronous_commit', sync, true);
  END IF;
  RETURN replies;
END $$;

-- Several settles of one process on the same counters, in order, in one transaction.
CREATE OR REPLACE FUNCTION {p}settle_many(docs jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  replies jsonb := '[]'::jsonb;
  d jsonb;
BEGIN
  FOR d IN SELECT value FROM jsonb_array_elements(docs) LOOP
    replies := replies || jsonb_build_array({p}settle(d));
  END LOOP;
  RETURN replies;
END $$;
