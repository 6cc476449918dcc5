/**
 * One account, one image budget. Before every image call (base, grid, redraw, safer rewrite,
 * retry; from any execution), the calling stage reserves the call's estimated cost against the
 * spending caps and takes a turn from one account-wide limiter at IMAGES_PER_MINUTE; the cost is
 * settled from the usage the API returns. The state lives in a store: this process's memory by
 * default, or the stack's DynamoDB table (IMAGE_BUDGET_TABLE), shared by every Lambda and every
 * local process that names it.
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
  /** Adds `usd` to `key` unless the sum would pass `limit`; false (nothing added) if it would. */
  add(key: string, usd: number, limit?: number, expiresAt?: number): Promise<boolean>;
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
}

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

  async function reserve(call: ImageCall): Promise<Reservation> {
    const usd = round(call.estimatedUsd ?? 0);
    const day = dayOf(clock);
    const expiresAt = Math.floor(clock.now().getTime() / 1000) + SPEND_KEPT_S;
    const added: string[] = [];
    if (!(await store.add(spendKeys.day(day), usd, limits.maxSpendUsdPerDay, expiresAt))) {
      const spent = await store.amount(spendKeys.day(day));
      throw new BudgetExhausted(
        `${call.what}: refused before paying: MAX_SPEND_USD_PER_DAY is ${cents(limits.maxSpendUsdPerDay!)} and ${cents(spent)} is spent or reserved today (UTC); this call is estimated at ${cents(usd)}. Raise the cap, or run again tomorrow`,
      );
    }
    added.push(spendKeys.day(day));
    if (call.budget) {
      const { batchId, usd: budget } = call.budget;
      try {
        if (!(await store.add(spendKeys.batch(batchId), usd, budget))) {
          const spent = await store.amount(spendKeys.batch(batchId));
          throw new BudgetExhausted(
            `${call.what}: refused before paying: batch ${batchId} has a budget of ${cents(budget)} and ${cents(spent)} of it is spent or reserved; this call is estimated at ${cents(usd)}. Run the batch again with a larger budget (avatars batch --budget-usd, or budgetUsd in its input): what is published is not paid again`,
          );
        }
        added.push(spendKeys.batch(batchId));
        await store.add(spendKeys.dayOfBatch(day, batchId), usd, undefined, expiresAt);
        added.push(spendKeys.dayOfBatch(day, batchId));
      } catch (error) {
        // A reservation made in part is given back whole.
        await adjust(added, -usd);
        throw error;
      }
    }
    return { usd, keys: added };
  }

  const ticket = (reservation: Reservation): Ticket => {
    let open = true;
    const once = async (delta: number) => {
      if (!open) return;
      open = false;
      await adjust(reservation.keys, delta);
    };
    return { settle: (actual) => once((actual ?? reservation.usd) - reservation.usd), release: () => once(-reservation.usd) };
  };

  return {
    reserve,
    settle: (reservation, actual) => adjust(reservation.keys, (actual ?? reservation.usd) - reservation.usd),
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
        await adjust(reservation.keys, -reservation.usd);
        throw error;
      });
      return ticket(reservation);
    },
    async take(call, maxWaitMs) {
      const reservation = await reserve(call);
      // Turns are real time, as the API counts them; the clock says which day's spending this is.
      const wait = await store.turn(`rate#${call.model}`, call.images, intervalMs, earlyMs, maxWaitMs, Date.now()).catch(async (error: unknown) => {
        await adjust(reservation.keys, -reservation.usd);
        throw error;
      });
      if (wait > maxWaitMs) {
        await adjust(reservation.keys, -reservation.usd);
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
  return {
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
    async add(key, usd, limit) {
      const next = round((amounts.get(key) ?? 0) + usd);
      if (limit !== undefined && usd > 0 && next > limit) return false;
      amounts.set(key, next);
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
    async add(key, usd, limit, expiresAt) {
      if (limit !== undefined && usd > 0 && usd > limit) return false;
      try {
        await client.send(
          new UpdateItemCommand({
            TableName: table,
            Key: { pk: { S: key } },
            UpdateExpression: expiresAt ? 'ADD usd :usd SET expiresAt = :expiresAt' : 'ADD usd :usd',
            ...(limit !== undefined && usd > 0 ? { ConditionExpression: 'attribute_not_exists(usd) OR usd <= :most' } : {}),
            ExpressionAttributeValues: {
              ':usd': { N: String(usd) },
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
