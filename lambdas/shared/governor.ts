/**
 * One account, one image budget. Every image call (base, grid, redraw, safer rewrite, retry; from
 * any execution) first claims its turn from one account-wide limiter at IMAGES_PER_MINUTE, first
 * come first served and held for it however far away, then reserves its estimated cost against
 * the spending caps under a lease that expires if never settled; the cost is settled from the
 * usage the API returns. The state lives in a store: this process's memory by default, or the
 * stack's DynamoDB table (IMAGE_BUDGET_TABLE), shared by every Lambda and every local process that
 * names it.
 */
import {
  ConditionalCheckFailedException,
  CreateTableCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  ResourceInUseException,
  ScanCommand,
  UpdateItemCommand,
  waitUntilTableExists,
} from '@aws-sdk/client-dynamodb';
import { randomUUID } from 'node:crypto';
import { withClientPlugins } from './aws-clients.ts';
import { dayOf, systemClock, type Clock } from './clock.ts';
import { BudgetExhausted, RateLimited } from './errors.ts';

/** Where turns and spending are kept. Every operation is atomic against concurrent callers. */
export interface BudgetStore {
  /**
   * The generic cell rate algorithm on `key`: each image is due `intervalMs` after the one before,
   * up to `earlyMs` early (the API's own burst). Takes the turn of `images` images and returns the
   * wait before it when that wait is at most `maxWaitMs`; otherwise takes nothing and returns the wait.
   */
  turn(key: string, images: number, intervalMs: number, earlyMs: number, maxWaitMs: number, now: number): Promise<number>;
  /**
   * Adds `usd` to `key` unless the sum would pass `limit`; false (nothing added) if it would. With
   * `lease`, the amount is also held under that lease in the same item, until settled or expired.
   */
  add(key: string, usd: number, limit?: number, expiresAt?: number, lease?: Lease): Promise<boolean>;
  /**
   * Settles `lease`'s part `reserved` at `key`: the sum moves by `actual - reserved` and the lease
   * gives that part up; a lease already swept (expired) took its part away, so `actual` is added.
   */
  settleLease(key: string, lease: string, reserved: number, actual: number, own: boolean): Promise<void>;
  /** Takes every lease at `key` past its time out of the sum: a reservation whose Lambda died. */
  sweepLeases(key: string, nowS: number): Promise<void>;
  /** The amount at `key` (0 when none): one item read by its key, as the stages' role allows. */
  amount(key: string): Promise<number>;
  /** Every amount whose key starts with `prefix` (a scan: for `avatars budget`, not the stages). */
  amounts(prefix: string): Promise<{ key: string; usd: number }[]>;
  /** The turn held at `key` (when it comes, epoch ms), if one is. */
  heldTurn(key: string): Promise<number | undefined>;
  /** Holds a turn at `key` (`at` undefined: lets it go), kept until `expiresAt` (epoch s) at most. */
  holdTurn(key: string, at: number | undefined, expiresAt: number): Promise<void>;
}

/** Whose money a call spends beyond the account's: a batch and the budget it was given. */
export interface BatchBudget {
  batchId: string;
  usd: number;
}

export interface ImageCall {
  /** Which call, for messages: "grid 0 for persona ada". */
  what: string;
  model: string;
  images: number;
  /** Before the call, from the model table; null when unpriced (it then counts as nothing). */
  estimatedUsd: number | null;
  budget?: BatchBudget | null;
  /** The lease to hold its reservation under: a call's own by default; an OpenAI batch round's lines share one. */
  lease?: string;
}

/** A reserved call: settled from what the API says it cost, or released if nothing was paid. */
export interface Ticket {
  settle(usd: number | null): Promise<void>;
  release(): Promise<void>;
}

export interface ImageGovernor {
  /**
   * The turn of the call `callKey` (a run's base, grid, safer redraw), first come first served
   * however far away: taken once and held for that call, so the stage that asked can go and wait
   * for it in Step Functions and find it held when it comes back. When it comes, epoch ms.
   */
  claimTurn(callKey: string, model: string, images: number): Promise<number>;
  /**
   * Reserves the cost of the call whose held turn has come (else BudgetExhausted) and lets the
   * turn go: the call's next claim (a retry, a redraw) takes a new one.
   */
  takeHeld(callKey: string, call: ImageCall): Promise<Ticket>;
  /**
   * Reserves the call's cost (else BudgetExhausted), then waits for its turn, up to `maxWaitMs`;
   * a turn further off takes nothing and is RateLimited: the stage is tried again, and claims one.
   */
  take(call: ImageCall, maxWaitMs: number): Promise<Ticket>;
  /**
   * Reserves a call's cost without a turn (else BudgetExhausted): a line of an OpenAI batch,
   * drawn outside the images-per-minute limit. The reservation is plain data, settled later,
   * by whichever process reads the answer.
   */
  reserve(call: ImageCall): Promise<Reservation>;
  settle(reservation: Reservation, usd: number | null): Promise<void>;
  /** The account's image spending today (UTC), settled and reserved. */
  spentToday(): Promise<number>;
}

/** What a call reserved, and where: kept with the call until its answer is read. */
export interface Reservation {
  usd: number;
  keys: string[];
  /** The lease it is held under (absent in reservations made before leases). */
  lease?: string;
  /** The lease is this reservation's alone (a call's): settling it ends it in the same write. */
  own?: boolean;
}

/** A share of a lease: its attribute and the amount, in micro-USD (whole numbers add up exactly). */
export interface Lease {
  name: string;
  micro: number;
}

/**
 * A lease's attribute: when it expires is in its name, so a sweep needs no other field. A
 * reservation lives under one until settled; one never settled (a Lambda that timed out or ran
 * out of memory) stops counting against the caps once its time is past.
 */
export const leaseName = (id: string, expiresAtS: number) => `lease_${expiresAtS}_${id.replace(/[^A-Za-z0-9_-]/g, '-')}`;
const leaseExpiry = (name: string) => Number(name.split('_')[1]);
const micro = (usd: number) => Math.round(usd * 1e6);
/** A synchronous call's lease: its call (at most IMAGE_TIMEOUT_MS, inside a Lambda of 15 minutes at most) and some. */
const CALL_LEASE_S = 20 * 60;

export interface GovernorLimits {
  imagesPerMinute: number;
  /** The account's spending per UTC day, every run included; none when undefined. */
  maxSpendUsdPerDay?: number | undefined;
}

const DAY_S = 24 * 3600;
/** Spending records are kept a month, for `avatars budget` and audits. */
const SPEND_KEPT_S = 35 * DAY_S;
const cents = (usd: number) => `$${usd.toFixed(2)}`;
const round = (usd: number) => Math.round(usd * 1e6) / 1e6;

export const spendKeys = {
  day: (day: string) => `spend#${day}`,
  dayOfBatch: (day: string, batchId: string) => `spend#${day}#batch#${batchId}`,
  batch: (batchId: string) => `budget#${batchId}`,
};

/** Turns come this much slower than the limit: a call that arrives a little early is not a 429. A batch's plan spaces its personas as much. */
export const HEADROOM = 1.05;
/** A held turn not used within a day is let go by the table's TTL. */
const HELD_TURN_KEPT_S = DAY_S;
export const turnKey = (callKey: string) => `turn#${callKey}`;

export function governor(store: BudgetStore, limits: GovernorLimits, clock: Clock = systemClock): ImageGovernor {
  const intervalMs = (60_000 / limits.imagesPerMinute) * HEADROOM;
  // A second's worth of images may go at once, as the API's own bucket allows.
  const earlyMs = Math.max(0, limits.imagesPerMinute / 60 - 1) * intervalMs;
  const adjust = async (keys: string[], delta: number) => {
    if (delta !== 0) await Promise.all(keys.map((key) => store.add(key, round(delta))));
  };

  /** Adds to `key` under the lease; refused, sweeps the leases past their time and tries once more. */
  const addLeased = async (key: string, usd: number, limit: number | undefined, expiresAt: number | undefined, lease: Lease) => {
    if (await store.add(key, usd, limit, expiresAt, lease)) return true;
    if (limit === undefined) return false;
    await store.sweepLeases(key, Math.floor(clock.now().getTime() / 1000));
    return store.add(key, usd, limit, expiresAt, lease);
  };

  /** Gives back a reservation's part at each key: settled at `actual` (0: nothing was paid). */
  const settle = async (reservation: Reservation, actual: number | null) => {
    const paid = round(actual ?? reservation.usd);
    if (reservation.lease === undefined) return adjust(reservation.keys, paid - reservation.usd);
    await Promise.all(reservation.keys.map((key) => store.settleLease(key, reservation.lease!, reservation.usd, paid, reservation.own === true)));
  };

  async function reserve(call: ImageCall): Promise<Reservation> {
    const usd = round(call.estimatedUsd ?? 0);
    const day = dayOf(clock);
    const nowS = Math.floor(clock.now().getTime() / 1000);
    const expiresAt = nowS + SPEND_KEPT_S;
    const lease = { name: call.lease ?? leaseName(randomUUID(), nowS + CALL_LEASE_S), micro: micro(usd) };
    const added: string[] = [];
    const reservation = (): Reservation => ({ usd, keys: added, lease: lease.name, ...(call.lease ? {} : { own: true }) });
    if (!(await addLeased(spendKeys.day(day), usd, limits.maxSpendUsdPerDay, expiresAt, lease))) {
      const spent = await store.amount(spendKeys.day(day));
      throw new BudgetExhausted(
        `${call.what}: refused before paying: MAX_SPEND_USD_PER_DAY is ${cents(limits.maxSpendUsdPerDay!)} and ${cents(spent)} is spent or reserved today (UTC); this call is estimated at ${cents(usd)}. Raise the cap, or run again tomorrow`,
      );
    }
    added.push(spendKeys.day(day));
    if (call.budget) {
      const { batchId, usd: budget } = call.budget;
      try {
        if (!(await addLeased(spendKeys.batch(batchId), usd, budget, undefined, lease))) {
          const spent = await store.amount(spendKeys.batch(batchId));
          throw new BudgetExhausted(
            `${call.what}: refused before paying: batch ${batchId} has a budget of ${cents(budget)} and ${cents(spent)} of it is spent or reserved; this call is estimated at ${cents(usd)}. Run the batch again with a larger budget (avatars batch --budget-usd, or budgetUsd in its input): what is published is not paid again`,
          );
        }
        added.push(spendKeys.batch(batchId));
        await store.add(spendKeys.dayOfBatch(day, batchId), usd, undefined, expiresAt, lease);
        added.push(spendKeys.dayOfBatch(day, batchId));
      } catch (error) {
        // A reservation made in part is given back whole.
        await settle(reservation(), 0);
        throw error;
      }
    }
    return reservation();
  }

  const ticket = (reservation: Reservation): Ticket => {
    let open = true;
    const once = async (actual: number | null) => {
      if (!open) return;
      open = false;
      await settle(reservation, actual);
    };
    return { settle: (actual) => once(actual), release: () => once(0) };
  };

  return {
    reserve,
    settle,
    spentToday: () => store.amount(spendKeys.day(dayOf(clock))),
    async claimTurn(callKey, model, images) {
      const held = await store.heldTurn(turnKey(callKey));
      if (held !== undefined) return held;
      // Turns are real time, as the API counts them; however far, the turn is the caller's.
      const now = Date.now();
      const at = now + (await store.turn(`rate#${model}`, images, intervalMs, earlyMs, Infinity, now));
      await store.holdTurn(turnKey(callKey), at, Math.floor(at / 1000) + HELD_TURN_KEPT_S);
      return at;
    },
    async takeHeld(callKey, call) {
      const reservation = await reserve(call);
      await store.holdTurn(turnKey(callKey), undefined, Math.floor(Date.now() / 1000) + HELD_TURN_KEPT_S).catch(async (error: unknown) => {
        await settle(reservation, 0);
        throw error;
      });
      return ticket(reservation);
    },
    async take(call, maxWaitMs) {
      const reservation = await reserve(call);
      // Turns are real time, as the API counts them; the clock says which day's spending this is.
      const wait = await store.turn(`rate#${call.model}`, call.images, intervalMs, earlyMs, maxWaitMs, Date.now()).catch(async (error: unknown) => {
        await settle(reservation, 0);
        throw error;
      });
      if (wait > maxWaitMs) {
        await settle(reservation, 0);
        throw new RateLimited(`${call.what}: the account's next image turn at ${limits.imagesPerMinute} images a minute is ${Math.ceil(wait / 1000)} s away; the stage is tried again, and then waits for its turn in Step Functions`);
      }
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      return ticket(reservation);
    },
  };
}

/** The store of one process: what a local run without IMAGE_BUDGET_TABLE shares among its calls. */
export function memoryStore(): BudgetStore {
  const tats = new Map<string, number>();
  const amounts = new Map<string, number>();
  const held = new Map<string, number>();
  const leases = new Map<string, Map<string, number>>();
  const leasesOf = (key: string) => leases.get(key) ?? leases.set(key, new Map()).get(key)!;
  const addTo = (key: string, usd: number) => amounts.set(key, round((amounts.get(key) ?? 0) + usd));
  return {
    async settleLease(key, lease, reserved, actual, own) {
      const shares = leasesOf(key);
      const left = shares.get(lease);
      if (left === undefined) {
        addTo(key, actual);
        return;
      }
      addTo(key, actual - reserved);
      if (own || left - micro(reserved) <= 0) shares.delete(lease);
      else shares.set(lease, left - micro(reserved));
    },
    async sweepLeases(key, nowS) {
      for (const [lease, left] of leasesOf(key)) {
        if (leaseExpiry(lease) >= nowS) continue;
        leasesOf(key).delete(lease);
        addTo(key, -left / 1e6);
      }
    },
    async heldTurn(key) {
      return held.get(key);
    },
    async holdTurn(key, at) {
      if (at === undefined) held.delete(key);
      else held.set(key, at);
    },
    async turn(key, images, intervalMs, earlyMs, maxWaitMs, now) {
      const tat = tats.get(key) ?? 0;
      const wait = Math.max(0, tat - earlyMs - now);
      if (wait <= maxWaitMs) tats.set(key, Math.max(tat, now) + images * intervalMs);
      return wait;
    },
    async add(key, usd, limit, _expiresAt, lease) {
      const next = round((amounts.get(key) ?? 0) + usd);
      if (limit !== undefined && usd > 0 && next > limit) return false;
      amounts.set(key, next);
      if (lease) leasesOf(key).set(lease.name, (leasesOf(key).get(lease.name) ?? 0) + lease.micro);
      return true;
    },
    async amount(key) {
      return amounts.get(key) ?? 0;
    },
    async amounts(prefix) {
      return [...amounts].filter(([key]) => key.startsWith(prefix)).map(([key, usd]) => ({ key, usd }));
    },
  };
}

/** A conditional write lost to another taker: read again and retry, after a short random pause. */
const contended = () => new Promise((resolve) => setTimeout(resolve, 2 + Math.random() * 10));

/** The stack's table: partition key `pk` (string), items `{ tat }` for turns and `{ usd, expiresAt }` for spending. */
export function dynamoStore(client: DynamoDBClient, table: string): BudgetStore {
  return {
    async heldTurn(key) {
      const item = (await client.send(new GetItemCommand({ TableName: table, Key: { pk: { S: key } }, ConsistentRead: true }))).Item;
      return item?.at?.N ? Number(item.at.N) : undefined;
    },
    async holdTurn(key, at, expiresAt) {
      // A put, as the stages' role allows (no DeleteItem): a turn let go is an item without `at`.
      await client.send(new PutItemCommand({ TableName: table, Item: { pk: { S: key }, expiresAt: { N: String(expiresAt) }, ...(at === undefined ? {} : { at: { N: String(at) } }) } }));
    },
    async turn(key, images, intervalMs, earlyMs, maxWaitMs, now) {
      for (;;) {
        const item = (await client.send(new GetItemCommand({ TableName: table, Key: { pk: { S: key } }, ConsistentRead: true }))).Item;
        const tat = item?.tat?.N ? Number(item.tat.N) : 0;
        const wait = Math.max(0, tat - earlyMs - now);
        if (wait > maxWaitMs) return wait;
        try {
          await client.send(
            new PutItemCommand({
              TableName: table,
              Item: { pk: { S: key }, tat: { N: String(Math.max(tat, now) + images * intervalMs) } },
              ConditionExpression: item ? 'tat = :seen' : 'attribute_not_exists(pk)',
              ...(item ? { ExpressionAttributeValues: { ':seen': { N: item.tat!.N! } } } : {}),
            }),
          );
          return wait;
        } catch (error) {
          // The caller's `now` stands: a few ms of contention only make its wait longer.
          if (!(error instanceof ConditionalCheckFailedException)) throw error;
          await contended();
        }
      }
    },
    async add(key, usd, limit, expiresAt, lease) {
      if (limit !== undefined && usd > 0 && usd > limit) return false;
      try {
        await client.send(
          new UpdateItemCommand({
            TableName: table,
            Key: { pk: { S: key } },
            // The amount and the lease's share move in one write: a cap counts exactly what is held.
            UpdateExpression: `ADD usd :usd${lease ? ', #lease :micro' : ''}${expiresAt ? ' SET expiresAt = :expiresAt' : ''}`,
            ...(limit !== undefined && usd > 0 ? { ConditionExpression: 'attribute_not_exists(usd) OR usd <= :most' } : {}),
            ...(lease ? { ExpressionAttributeNames: { '#lease': lease.name } } : {}),
            ExpressionAttributeValues: {
              ':usd': { N: String(usd) },
              ...(lease ? { ':micro': { N: String(lease.micro) } } : {}),
              ...(expiresAt ? { ':expiresAt': { N: String(expiresAt) } } : {}),
              ...(limit !== undefined && usd > 0 ? { ':most': { N: String(round(limit - usd)) } } : {}),
            },
          }),
        );
        return true;
      } catch (error) {
        if (error instanceof ConditionalCheckFailedException) return false;
        throw error;
      }
    },
    async settleLease(key, lease, reserved, actual, own) {
      const update = (expression: string, values: Record<string, string>, condition?: string) =>
        client.send(
          new UpdateItemCommand({
            TableName: table,
            Key: { pk: { S: key } },
            UpdateExpression: expression,
            ...(condition ? { ConditionExpression: condition } : {}),
            ...(expression.includes('#lease') || condition?.includes('#lease') ? { ExpressionAttributeNames: { '#lease': lease } } : {}),
            ExpressionAttributeValues: Object.fromEntries(Object.entries(values).map(([name, n]) => [name, { N: n }])),
          }),
        );
      try {
        // A call's own lease ends with it, in one write; a round's shared one gives up this part.
        if (own) await update('REMOVE #lease ADD usd :delta', { ':delta': String(round(actual - reserved)) }, 'attribute_exists(#lease)');
        else await update('ADD usd :delta, #lease :part', { ':delta': String(round(actual - reserved)), ':part': String(-micro(reserved)) }, 'attribute_exists(#lease)');
      } catch (error) {
        if (!(error instanceof ConditionalCheckFailedException)) throw error;
        // Swept: the lease's whole share left the sum then; what was paid comes in now.
        await update('ADD usd :actual', { ':actual': String(actual) });
        return;
      }
      if (own) return;
      await update('REMOVE #lease', { ':none': '0' }, '#lease <= :none').catch((error: unknown) => {
        if (!(error instanceof ConditionalCheckFailedException)) throw error;
      });
    },
    async sweepLeases(key, nowS) {
      const item = (await client.send(new GetItemCommand({ TableName: table, Key: { pk: { S: key } }, ConsistentRead: true }))).Item ?? {};
      for (const [lease, value] of Object.entries(item)) {
        if (!lease.startsWith('lease_') || leaseExpiry(lease) >= nowS) continue;
        await client
          .send(
            new UpdateItemCommand({
              TableName: table,
              Key: { pk: { S: key } },
              // Only as it was seen: a lease settled meanwhile is not taken twice.
              UpdateExpression: 'REMOVE #lease ADD usd :minus',
              ConditionExpression: '#lease = :seen',
              ExpressionAttributeNames: { '#lease': lease },
              ExpressionAttributeValues: { ':seen': { N: value.N! }, ':minus': { N: String(round(-Number(value.N) / 1e6)) } },
            }),
          )
          .catch((error: unknown) => {
            if (!(error instanceof ConditionalCheckFailedException)) throw error;
          });
      }
    },
    async amount(key) {
      // The stages may GetItem, never Scan (stage-functions.ts).
      const item = (await client.send(new GetItemCommand({ TableName: table, Key: { pk: { S: key } }, ConsistentRead: true }))).Item;
      return item?.usd?.N ? Number(item.usd.N) : 0;
    },
    async amounts(prefix) {
      const found: { key: string; usd: number }[] = [];
      let start: Record<string, never> | undefined;
      do {
        const page = await client.send(
          new ScanCommand({
            TableName: table,
            FilterExpression: 'begins_with(pk, :prefix) AND attribute_exists(usd)',
            ExpressionAttributeValues: { ':prefix': { S: prefix } },
            ...(start ? { ExclusiveStartKey: start } : {}),
          }),
        );
        for (const item of page.Items ?? []) found.push({ key: item.pk!.S!, usd: Number(item.usd!.N) });
        start = page.LastEvaluatedKey as typeof start;
      } while (start);
      return found;
    },
  };
}

type Env = Record<string, string | undefined>;

/**
 * The table as the stack creates it, made where it is missing: for a DynamoDB-compatible server
 * that local processes share (on AWS the stack owns it). Two processes may race: both go on.
 */
export async function ensureBudgetTable(client: DynamoDBClient, table: string): Promise<void> {
  try {
    await client.send(
      new CreateTableCommand({
        TableName: table,
        AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
        KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
        BillingMode: 'PAY_PER_REQUEST',
      }),
    );
  } catch (error) {
    if (!(error instanceof ResourceInUseException)) throw error;
  }
  await waitUntilTableExists({ client, maxWaitTime: 60, minDelay: 1 }, { TableName: table });
}

/** A client for the table: AWS_ENDPOINT_URL_DYNAMODB (or AWS_ENDPOINT_URL) names a compatible server. */
export function budgetTableClient(env: Env): DynamoDBClient {
  const endpoint = env.AWS_ENDPOINT_URL_DYNAMODB ?? env.AWS_ENDPOINT_URL;
  // Passed on, not left to the SDK: `env` need not be process.env.
  const credentials = env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY ? { credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY } } : {};
  return withClientPlugins(new DynamoDBClient(endpoint ? { endpoint, region: env.AWS_REGION ?? 'us-east-1', ...credentials } : {}));
}

let processStore: BudgetStore | undefined;

/**
 * The store the environment names: IMAGE_BUDGET_TABLE through the SDK's standard configuration
 * (AWS_ENDPOINT_URL_DYNAMODB for any DynamoDB-compatible endpoint), else this process's memory.
 */
export function budgetStoreFromEnv(env: Env): BudgetStore {
  const table = env.IMAGE_BUDGET_TABLE;
  return table ? dynamoStore(budgetTableClient(env), table) : (processStore ??= memoryStore());
}

/** For the batch round stages, which reserve and settle OpenAI batch calls themselves. */
export function governorClient(env: Env, settings: GovernorLimits, _logger: unknown, clock: Clock): { governor: ImageGovernor } {
  return { governor: governor(budgetStoreFromEnv(env), settings, clock) };
}
