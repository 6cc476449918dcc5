/**
 * Every setting, once: its environment name (the seed's `.env` names where it had one), its CDK
 * context name, its default and its meaning. From this table come the stages' settings, the
 * Lambda environment the stack writes (from context), the local runner's settings (cdk.json's
 * context under the shell's variables) and README's configuration table (`avatars config --markdown`).
 */
import * as z from 'zod/mini';
import './zod.ts';
import { ConfigurationError } from './errors.ts';
import { systemClock, type Clock } from './clock.ts';
import { checkImageSettings } from './models.ts';
import { IMAGES_PER_GRID, MAX_IMAGES } from './persona.ts';

/** SigV4 presigned URLs live at most seven days, and only as long as the credentials that sign them. */
export const MAX_PRESIGNED_SECONDS = 7 * 24 * 3600;

type Scope = 'stage' | 'stack' | 'client';

/** The retention periods CloudWatch Logs offers. */
const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];

interface Spec<T> {
  scope: Scope;
  /** Environment variable; older names it also answers to follow in `aliases`. */
  env?: string;
  aliases?: string[];
  /** CDK context key (cdk.json or `-c key=value`). */
  context?: string;
  default?: string;
  doc: string;
  schema: z.ZodMiniType<T>;
}

const spec = <T, S extends Scope>(s: Spec<T> & { scope: S }) => s;
const text = z.string().check(z.trim(), z.minLength(1));
const optionalText = z.optional(text);
const wholeNumber = (min: number, max: number) => z.pipe(z.coerce.number(), z.int().check(z.minimum(min), z.maximum(max)));
const url = z.pipe(z.url(), z.transform((u: string) => u.replace(/\/+$/, '')));
const optionalUrl = z.optional(url);
const list = z.pipe(z.string(), z.transform((s: string) => s.split(',').map((m) => m.trim()).filter(Boolean)));

export const SETTINGS = {
  bucket: spec({ scope: 'stage', env: 'S3_BUCKET_NAME', default: 'avatars', doc: 'the bucket every stage reads and writes (on AWS: set by the stack)', schema: text }),
  imageModel: spec({ scope: 'stage', env: 'IMAGE_MODEL', context: 'imageModel', default: 'gpt-image-2', doc: 'image model; any in the model table (README: Image models)', schema: text }),
  imageFallbackModels: spec({
    scope: 'stage',
    env: 'IMAGE_FALLBACK_MODELS',
    aliases: ['IMAGE_FALLBACK_MODEL'],
    context: 'imageFallbackModels',
    default: '',
    doc: 'comma-separated models tried in order when one answers `model_not_found`, none by default (`IMAGE_FALLBACK_MODEL` still works)',
    schema: list,
  }),
  imageSize: spec({ scope: 'stage', env: 'IMAGE_SIZE', context: 'imageSize', default: '1024x1024', doc: 'size of the base and of each grid; gpt-image-2 takes any WxH in multiples of 16 (2048x2048: avatars of about 1000 px)', schema: text }),
  imageQuality: spec({ scope: 'stage', env: 'IMAGE_QUALITY', context: 'imageQuality', default: 'medium', doc: '`low`, `medium`, `high` or `auto` (gpt-image-2.5 also `xhigh`, `max`)', schema: text }),
  imageModeration: spec({ scope: 'stage', env: 'IMAGE_MODERATION', context: 'imageModeration', default: 'auto', doc: 'the image API\'s moderation level, `auto` or `low`', schema: z.enum(['auto', 'low']) }),
  imageInputFidelity: spec({
    scope: 'stage',
    env: 'IMAGE_INPUT_FIDELITY',
    context: 'imageInputFidelity',
    default: 'high',
    doc: '`input_fidelity` on edits, for models that take it (keeps the reference face)',
    schema: z.enum(['high', 'low']),
  }),
  moderationCheck: spec({
    scope: 'stage',
    context: 'moderationCheck',
    env: 'MODERATION_CHECK',
    default: 'on',
    doc: '`on`: every image prompt goes through OpenAI\'s free moderation endpoint first; one it flags is rewritten before any image is paid for',
    schema: z.enum(['on', 'off']),
  }),
  defaultImages: spec({ scope: 'stage', env: 'DEFAULT_IMAGES', context: 'images', default: String(IMAGES_PER_GRID), doc: 'images per run when the execution input names none', schema: wholeNumber(1, MAX_IMAGES) }),
  textModel: spec({ scope: 'stage', env: 'TEXT_MODEL', context: 'textModel', default: 'gpt-4.1-mini', doc: 'prompt-writing model', schema: text }),
  imageTimeoutMs: spec({ scope: 'stage', env: 'IMAGE_TIMEOUT_MS', context: 'imageTimeoutMs', default: '600000', doc: 'cap for one image call (on Lambda also kept 20 s under the remaining time)', schema: wholeNumber(100, 3_600_000) }),
  textTimeoutMs: spec({ scope: 'stage', env: 'TEXT_TIMEOUT_MS', context: 'textTimeoutMs', default: '120000', doc: 'cap for one prompt-writing call (OpenAI text model or Flowise)', schema: wholeNumber(100, 3_600_000) }),
  promptProvider: spec({ scope: 'stage', env: 'PROMPT_PROVIDER', context: 'promptProvider', default: 'auto', doc: '`auto` (Flowise if configured, else the OpenAI text model, else the template) or `template`', schema: z.enum(['auto', 'template']) }),
  flowiseUrl: spec({ scope: 'stage', env: 'FLOWISE_URL', context: 'flowiseUrl', doc: 'write prompts with this Flowise server…', schema: optionalUrl }),
  flowiseChatflowId: spec({ scope: 'stage', env: 'FLOWISE_CHATFLOW_ID', context: 'flowiseChatflowId', doc: '…and this chatflow', schema: optionalText }),
  flowiseApiKey: spec({ scope: 'stage', env: 'FLOWISE_API_KEY', doc: 'bearer key for the chatflow', schema: optionalText }),
  publicBaseUrl: spec({ scope: 'stage', env: 'PUBLIC_BASE_URL', context: 'publicBaseUrl', doc: 'return `{PUBLIC_BASE_URL}/{key}` instead of presigned URLs', schema: optionalUrl }),
  s3Endpoint: spec({ scope: 'stage', env: 'S3_ENDPOINT', doc: 'an S3-compatible server (path-style, checksums only when required)', schema: optionalUrl }),
  avatarSize: spec({
    scope: 'stage',
    env: 'AVATAR_SIZE',
    context: 'avatarSize',
    default: 'auto',
    doc: 'width of every avatar in pixels, or `auto`: the largest every tile of the run gives without upscaling',
    schema: z.union([z.literal('auto'), wholeNumber(64, 4096)]),
  }),
  avatarAspect: spec({
    scope: 'stage',
    env: 'AVATAR_ASPECT',
    context: 'avatarAspect',
    default: '1:1',
    doc: 'width:height of every avatar, e.g. `4:5`; cropped around the subject, never stretched',
    schema: z.string().check(z.regex(/^[1-9]\d{0,2}:[1-9]\d{0,2}$/, 'must be WIDTH:HEIGHT, e.g. 1:1 or 4:5')),
  }),
  identityPolicy: spec({
    scope: 'stage',
    env: 'IDENTITY_POLICY',
    context: 'identityPolicy',
    default: 'redraw',
    doc: 'the identity check: `redraw` a grid with a panel that is not the base\'s person (twice at most, then fail), `flag` (publish all, with verdicts) or `off`',
    schema: z.enum(['redraw', 'flag', 'off']),
  }),
  identityThreshold: spec({
    scope: 'stage',
    env: 'IDENTITY_THRESHOLD',
    context: 'identityThreshold',
    default: '0.55',
    doc: 'the least similarity (cosine, 0 to 1) of a panel\'s face to the base\'s for the same person (README: The identity check)',
    schema: z.pipe(z.coerce.number(), z.number().check(z.minimum(0), z.maximum(1))),
  }),
  lookalikePolicy: spec({
    scope: 'stage',
    env: 'LOOKALIKE_POLICY',
    context: 'lookalikePolicy',
    default: 'redraw',
    doc: 'the base checks (look-alikes of other personas, a gender or age that clearly misses the persona): `redraw` the base (twice at most, then publish it flagged), `flag` (publish, with verdicts) or `off` (README: Every persona a different person)',
    schema: z.enum(['redraw', 'flag', 'off']),
  }),
  lookalikeThreshold: spec({
    scope: 'stage',
    env: 'LOOKALIKE_THRESHOLD',
    context: 'lookalikeThreshold',
    default: '0.58',
    doc: 'the similarity (cosine, 0 to 1) of a base\'s face to another persona\'s from which it counts as the same person',
    schema: z.pipe(z.coerce.number(), z.number().check(z.minimum(0), z.maximum(1))),
  }),
  genderConfidence: spec({
    scope: 'stage',
    env: 'GENDER_CONFIDENCE',
    context: 'genderConfidence',
    default: '0.8',
    doc: 'how sure (0 to 1) the face model must be of a gender other than the persona\'s for a clear miss',
    schema: z.pipe(z.coerce.number(), z.number().check(z.minimum(0), z.maximum(1))),
  }),
  ageToleranceYears: spec({
    scope: 'stage',
    env: 'AGE_TOLERANCE_YEARS',
    context: 'ageToleranceYears',
    default: '15',
    doc: 'how many years the face model\'s apparent age may fall outside the age the bios state before it is a clear miss',
    schema: wholeNumber(0, 100),
  }),
  tileFormat: spec({ scope: 'stage', env: 'TILE_FORMAT', context: 'tileFormat', default: 'png', doc: 'avatar format: `png`, `webp` or `jpeg` (asked of the image API too)', schema: z.enum(['png', 'webp', 'jpeg']) }),
  avatarCredit: spec({ scope: 'stage', env: 'AVATAR_CREDIT', context: 'avatarCredit', default: 'AI-generated avatar (persona-avatars)', doc: 'the credit line written into every avatar beside its AI-generated marking (README: Marking)', schema: text }),
  outputCompression: spec({ scope: 'stage', env: 'OUTPUT_COMPRESSION', context: 'outputCompression', default: '90', doc: 'quality 0-100 of webp and jpeg avatars (the API\'s `output_compression`)', schema: wholeNumber(0, 100) }),
  urlExpirySeconds: spec({ scope: 'stage', env: 'URL_EXPIRY_SECONDS', context: 'urlExpirySeconds', default: String(MAX_PRESIGNED_SECONDS), doc: 'presigned URL lifetime, at most 604800 (7 days)', schema: wholeNumber(1, MAX_PRESIGNED_SECONDS) }),
  stateMachineArn: spec({ scope: 'stage', env: 'STATE_MACHINE_ARN', doc: 'the state machine `avatars start` and the upload trigger start (on AWS: set by the stack)', schema: optionalText }),
  batchStateMachineArn: spec({ scope: 'stage', env: 'BATCH_STATE_MACHINE_ARN', doc: 'the batch state machine `.jsonl` uploads and `avatars start FILE.jsonl` start (on AWS: set by the stack)', schema: optionalText }),
  imagesPerMinute: spec({
    scope: 'stage',
    env: 'IMAGES_PER_MINUTE',
    context: 'imagesPerMinute',
    default: '50',
    doc: 'the OpenAI account\'s image rate limit (tiers 1-5 of gpt-image-2: 5, 20, 50, 150, 250); batches pace their image calls to it (README: Batches)',
    schema: wholeNumber(1, 100_000),
  }),
  imageTurnWaitMs: spec({
    scope: 'stage',
    env: 'IMAGE_TURN_WAIT_MS',
    context: 'imageTurnWaitMs',
    default: '20000',
    doc: 'longest wait for an image call\'s turn inside a stage; a later turn is held for the call and waited for in a Wait state of the workflow, however long',
    schema: wholeNumber(0, 3_600_000),
  }),
  maxSpendUsdPerDay: spec({
    scope: 'stage',
    env: 'MAX_SPEND_USD_PER_DAY',
    context: 'maxSpendUsdPerDay',
    doc: 'the account\'s image spending per UTC day, every run and batch together (estimated before each call, settled from its usage); a call past it is refused before it is paid for (`BudgetExhausted`); none by default',
    schema: z.optional(z.pipe(z.coerce.number(), z.number().check(z.positive()))),
  }),
  batchBudgetUsd: spec({
    scope: 'stage',
    env: 'BATCH_BUDGET_USD',
    context: 'batchBudgetUsd',
    doc: 'the budget of a batch that names none (`avatars batch --budget-usd`, `budgetUsd` in its input); none by default',
    schema: z.optional(z.pipe(z.coerce.number(), z.number().check(z.positive()))),
  }),
  imageApiMode: spec({
    scope: 'stage',
    env: 'IMAGE_API_MODE',
    context: 'imageApiMode',
    default: 'sync',
    doc: 'how a batch draws: `sync`, image calls paced to IMAGES_PER_MINUTE, or `batch`, through OpenAI\'s Batch API in rounds at half the price, within 24 h (per batch: `avatars batch --openai-batch`, `openAiBatch` in its input; README: OpenAI Batch API)',
    schema: z.enum(['sync', 'batch']),
  }),
  openAiBatchImageInput: spec({
    scope: 'stage',
    env: 'OPENAI_BATCH_IMAGE_INPUT',
    context: 'openAiBatchImageInput',
    default: 'auto',
    doc: 'how a batched edit names its reference image: `data-url` (the base, base64, in the line), `file-id` (the base uploaded to /v1/files first, purpose `vision`), or `auto`: data URLs while they come to at most 100 MB a round, file ids past that (a round of thousands would not fit the Lambda\'s /tmp)',
    schema: z.enum(['auto', 'data-url', 'file-id']),
  }),
  openAiBatchPollSeconds: spec({
    scope: 'stage',
    env: 'OPENAI_BATCH_POLL_SECONDS',
    context: 'openAiBatchPollSeconds',
    default: '60',
    doc: 'the first wait of the batch state machine before it asks OpenAI whether a round is done; each later wait is 1.5x longer, at most 15 minutes',
    schema: wholeNumber(1, 900),
  }),

  bucketName: spec({ scope: 'stack', context: 'bucketName', doc: 'import this existing bucket instead of creating one', schema: optionalText }),
  runExpiryDays: spec({ scope: 'stack', context: 'runExpiryDays', default: '7', doc: 'days intermediate files under `runs/` are kept', schema: wholeNumber(1, 3650) }),
  openAiSecretName: spec({ scope: 'stack', context: 'openAiSecretName', default: 'persona-avatars/openai-api-key', doc: 'Secrets Manager secret holding the OpenAI key', schema: text }),
  c2paSigningSecretName: spec({
    scope: 'stack',
    context: 'c2paSigningSecretName',
    default: 'persona-avatars/c2pa-signing',
    doc: 'Secrets Manager secret publish signs the avatars\' C2PA manifests with: `{"certificate": "<PEM chain>", "privateKey": "<PEM key>"}`, ES256; until it exists, avatars carry XMP only, with a warning (README: Marking)',
    schema: text,
  }),
  architecture: spec({ scope: 'stack', context: 'architecture', default: 'x86_64', doc: '`x86_64` or `arm64` (needs sharp\'s linux-arm64 packages installed)', schema: z.enum(['x86_64', 'arm64']) }),
  supersededRunExpiryDays: spec({
    scope: 'stack',
    context: 'supersededRunExpiryDays',
    doc: 'opt-in: delete a run\'s avatars this many days after a newer run of the persona replaced it (tag `avatar-run=superseded`)',
    schema: z.optional(wholeNumber(1, 3650)),
  }),
  alarmEmail: spec({ scope: 'stack', context: 'alarmEmail', doc: 'mail the alarms (failed, timed-out, stopped runs; dead-lettered uploads) to this address', schema: optionalText }),
  logRetentionDays: spec({
    scope: 'stack',
    context: 'logRetentionDays',
    default: '30',
    doc: 'days the functions\' and the workflow\'s logs are kept (one of CloudWatch\'s periods: 1, 3, 5, 7, 14, 30, 60, 90, 180, 365…)',
    schema: z.pipe(wholeNumber(1, 3653), z.number().check(z.refine((n) => LOG_RETENTION_DAYS.includes(n), `must be one of ${LOG_RETENTION_DAYS.join(', ')}`))),
  }),
  gridConcurrency: spec({ scope: 'stack', context: 'gridConcurrency', default: '4', doc: 'grids generated at once per run', schema: wholeNumber(1, 40) }),

  openAiKey: spec({ scope: 'client', env: 'OPENAI_API_KEY', doc: 'OpenAI key (on AWS: the secret named by `OPENAI_API_KEY_SECRET_ARN`); without one, runs use the offline backend', schema: optionalText }),
  openAiBaseUrl: spec({ scope: 'client', env: 'OPENAI_BASE_URL', doc: 'an OpenAI-compatible server', schema: optionalText }),
  c2paSigningSecretArn: spec({ scope: 'client', env: 'C2PA_SIGNING_SECRET_ARN', doc: 'the C2PA signing secret publish reads (on AWS: set by the stack from `c2paSigningSecretName`)', schema: optionalText }),
  c2paCertificate: spec({
    scope: 'client',
    env: 'C2PA_CERTIFICATE',
    doc: 'elsewhere: a PEM file of the C2PA signing certificate chain, with `C2PA_PRIVATE_KEY` its PEM key; locally, without them, a development certificate is made in `--data`',
    schema: optionalText,
  }),
  c2paPrivateKey: spec({ scope: 'client', env: 'C2PA_PRIVATE_KEY', doc: 'the PEM file of the key of `C2PA_CERTIFICATE` (ECDSA P-256)', schema: optionalText }),
  imageBudgetTable: spec({
    scope: 'client',
    env: 'IMAGE_BUDGET_TABLE',
    doc: 'the DynamoDB table where every process shares the image turns and spending (on AWS: set by the stack; elsewhere through the SDK\'s configuration, `AWS_ENDPOINT_URL_DYNAMODB` for a compatible server); without it, a process keeps its own',
    schema: optionalText,
  }),
  s3AccessKey: spec({ scope: 'client', env: 'S3_ACCESS_KEY', doc: 'access key for `S3_ENDPOINT`', schema: optionalText }),
  s3SecretKey: spec({ scope: 'client', env: 'S3_SECRET_KEY', doc: 'secret key for `S3_ENDPOINT`', schema: optionalText }),
} as const;

type Specs = typeof SETTINGS;
type KeysOf<S extends Scope> = { [K in keyof Specs]: Specs[K]['scope'] extends S ? K : never }[keyof Specs];
type Parsed<K extends keyof Specs> = z.output<Specs[K]['schema']>;

/** Everything a stage reads, parsed and checked once. */
export type Settings = { [K in KeysOf<'stage'>]: Parsed<K> };
/** What only the stack reads, from context. */
export type StackSettings = { [K in KeysOf<'stack'>]: Parsed<K> };

type Source = Record<string, unknown>;

function parseOne<K extends keyof Specs>(key: K, source: Source, by: 'env' | 'context'): Parsed<K> {
  const s = SETTINGS[key] as Spec<Parsed<K>>;
  const names = by === 'env' ? [s.env, ...(s.aliases ?? [])] : [s.context];
  const name = names.find((n) => n && source[n] !== undefined && source[n] !== '');
  const raw = name ? source[name] : s.default;
  const label = by === 'env' ? (name ?? s.env) : `context ${s.context}`;
  const parsed = s.schema.safeParse(raw === undefined ? undefined : Array.isArray(raw) ? raw.join(',') : String(raw));
  if (!parsed.success) throw new ConfigurationError(`${label}: ${parsed.error.issues[0]!.message}, got "${String(raw)}"`);
  return parsed.data;
}

function keysOf(scope: Scope): (keyof Specs)[] {
  return (Object.keys(SETTINGS) as (keyof Specs)[]).filter((k) => SETTINGS[k].scope === scope);
}

/** Model, size and quality together; errors name the setting as the source spells it. */
function checkModels(settings: Settings, by: 'env' | 'context', clock: Clock): void {
  const { errors } = checkImageSettings(settings, clock);
  if (errors.length === 0) return;
  const label = (k: keyof Specs) => (by === 'env' ? SETTINGS[k].env : `context ${SETTINGS[k].context}`);
  throw new ConfigurationError(errors.map((e) => `${label(e.setting)}: ${e.message}`).join('; '));
}

function parseStage(source: Source, by: 'env' | 'context', clock: Clock): Settings {
  const settings = Object.fromEntries(keysOf('stage').map((k) => [k, parseOne(k, source, by)])) as Settings;
  if (!!settings.flowiseUrl !== !!settings.flowiseChatflowId) {
    throw new ConfigurationError(`${by === 'env' ? 'FLOWISE_URL and FLOWISE_CHATFLOW_ID' : 'context flowiseUrl and flowiseChatflowId'} go together: set both or neither`);
  }
  checkModels(settings, by, clock);
  return settings;
}

/** The stages' settings from the environment (names match the seed's `.env`). */
export function settingsFromEnv(env: Record<string, string | undefined> = process.env, clock: Clock = systemClock): Settings {
  return parseStage(env, 'env', clock);
}

/** The stages' settings from CDK context: what the stack will configure its functions with. */
export function settingsFromContext(context: Source, clock: Clock = systemClock): Settings {
  return parseStage(context, 'context', clock);
}

export function stackSettingsFromContext(context: Source): StackSettings {
  return Object.fromEntries(keysOf('stack').map((k) => [k, parseOne(k, context, 'context')])) as StackSettings;
}

/**
 * Environment variables that carry the context-configurable settings to a stage, as parsed; with
 * `only`, just those the context sets (so the variables a caller adds still win over defaults).
 */
export function environmentOf(settings: Settings, only?: Record<string, unknown>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of keysOf('stage')) {
    const s = SETTINGS[key];
    const value = settings[key as keyof Settings];
    if (!s.context || !s.env || value === undefined || (Array.isArray(value) && value.length === 0) || (only && only[s.context] === undefined)) continue;
    env[s.env] = Array.isArray(value) ? value.join(',') : String(value);
  }
  return env;
}

/** The configuration table README shows, generated from this schema. */
export function settingsTable(): string {
  const rows = (Object.values(SETTINGS) as Spec<unknown>[]).map((s) => {
    const names = [s.env, ...(s.aliases ?? [])].filter(Boolean).map((n) => `\`${n}\``).join(', ') || '—';
    const context = s.context ? `\`${s.context}\`` : '—';
    const fallback = s.default ? `\`${s.default}\`` : '—';
    return `| ${names} | ${context} | ${fallback} | ${s.doc} |`;
  });
  return ['| variable | context | default | meaning |', '| --- | --- | --- | --- |', ...rows].join('\n');
}
