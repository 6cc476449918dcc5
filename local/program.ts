/**
 * The avatars commands, their arguments and options. Each command's module is loaded only when it
 * runs: `--help` and `split` do not pay for the CDK app, the AWS SDK or the workflow.
 */
import { Argument, Command, InvalidArgumentError, Option } from 'commander';
import { faultHelp } from './faults.ts';

const int = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number`);
  return n;
};

const usd = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number of US dollars`);
  return n;
};

/** A batch's budget and how it draws: `avatars batch`, and `avatars start` with a .jsonl file. */
const budgetOption = new Option('--budget-usd <usd>', 'for a batch: what its image calls may spend, in US dollars; a call past it is refused before it is paid for (default: BATCH_BUDGET_USD, else none)').argParser(usd('--budget-usd'));
const openAiBatchOption = new Option('--openai-batch', 'for a batch: draw through OpenAI\u2019s Batch API in rounds, at half the price, outside the images-per-minute limit (default: IMAGE_API_MODE)');

/** Runs a command's module and sets the exit code it returns. */
const action =
  <A extends unknown[]>(load: () => Promise<(...args: A) => Promise<number>>) =>
  async (...args: A) => {
    process.exitCode = await (await load())(...args);
  };

export function program(): Command {
  const cli = new Command('avatars')
    .description('persona-avatars: persona in, consistent avatar photos out')
    // A command used wrongly: one line saying what, a hint, exit 2 (a failed run or batch is 1).
    .showHelpAfterError('(avatars --help lists the commands)')
    .configureOutput({ outputError: (message, write) => write(`avatars: ${message.replace(/^error: /, '')}`) })
    .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2));
  const dataOption = new Option('--data <dir>', 'where the embedded S3 keeps its data').default('.avatars');
  const faultOption = new Option('--fault <spec...>', faultHelp()).default([]);
  const personaArgument = new Argument('<persona.json>', 'a persona, or an execution input { "persona": …, "images": 8 }');
  const imagesOption = new Option('--images <n>', 'how many avatars (4 per grid)').argParser(int('--images'));
  const modeOption = new Option('--mode <mode>', 'grid: 2x2 grids split apart; separate: one image per call').choices(['grid', 'separate']);
  const jsonOption = new Option('--json', 'print the result as JSON');
  const latencyOption = new Option('--latency <ms>', 'offline backend: delay per image call').argParser(int('--latency')).default(0);
  const retryDelayOption = new Option('--retry-delay <ms>', 'pause before each retry instead of the deployed backoff').argParser(int('--retry-delay')).default(0);
  const rpmOption = new Option('--rpm <n>', 'offline backend: an image rate limit, in images per minute (429 with retry-after beyond it); also the pace unless IMAGES_PER_MINUTE is set').argParser(int('--rpm'));
  const pollOption = new Option('--poll-interval <ms>', 'how often to read the execution history').argParser(int('--poll-interval')).default(2000);
  /** What the commands that run workflows locally share: the offline backend's knobs, the data folder. */
  const localRun = (command: Command) =>
    command.addOption(jsonOption).addOption(faultOption).addOption(latencyOption).addOption(rpmOption).addOption(dataOption).addOption(retryDelayOption).option('--quiet', 'no progress lines');
  const run = cli
    .command('run')
    .description('run the whole workflow locally for one persona and save the avatars')
    .addArgument(personaArgument)
    .addOption(imagesOption)
    .addOption(modeOption)
    .option('--out <dir>', 'where to save the images, contact sheet and index.html (default: out/<persona id>)');
  localRun(run)
    .option('--verbose', 'print the stages\u2019 JSON logs')
    .option('--keep-grids', 'also save the 2x2 grids the image API drew, to <out>/grids/ (for avatars split)')
    .action(action(async () => (await import('./commands/run.ts')).runCommand));
  const batch = cli
    .command('batch')
    .description('run a batch of personas locally, one per line of a JSON Lines file, paced to IMAGES_PER_MINUTE; exit 1 if any failed')
    .argument('<personas.jsonl>', 'one persona (or execution input) per line')
    .addOption(imagesOption)
    .addOption(modeOption)
    .option('--out <dir>', 'where to save the report, contact sheet and avatars (default: out/batches/<batch id>)')
    .addOption(budgetOption)
    .addOption(openAiBatchOption)
    .addOption(new Option('--queue-limit <lines>', 'offline backend: the Batch API\u2019s queue limit, in lines enqueued at once; a batch past it fails token_limit_exceeded, as OpenAI\u2019s does').argParser(int('--queue-limit')));
  localRun(batch).action(action(async () => (await import('./commands/batch.ts')).batchCommand));
  cli
    .command('invoke')
    .description('run one stage on an event fixture, as `sam local invoke -e` does')
    .argument('<stage>', 'a stage: a folder under lambdas/, e.g. generate-base')
    .requiredOption('--event <file>', 'the event JSON, e.g. events/generate-base.json')
    .option('--put <key=file...>', 'put files into the bucket first, e.g. personas/ada-lovelace.json=events/persona.json', [])
    .addOption(dataOption)
    .addOption(faultOption)
    .action(action(async () => (await import('./commands/invoke.ts')).invokeCommand));
  cli
    .command('start')
    .description('start an execution of the deployed state machine, or a batch for a .jsonl file (or any Step Functions endpoint: AWS_ENDPOINT_URL_SFN)')
    .addArgument(personaArgument)
    .addOption(imagesOption)
    .addOption(modeOption)
    .option('--state-machine-arn <arn>', 'the StateMachineArn output of the stack (default: $STATE_MACHINE_ARN)')
    .option('--batch-state-machine-arn <arn>', 'for a .jsonl file: the BatchStateMachineArn output (default: $BATCH_STATE_MACHINE_ARN)')
    .option('--bucket <name>', 'for a .jsonl file: the BucketName output, where the file is put (default: $S3_BUCKET_NAME)')
    .option('--name <name>', 'execution name (default: the persona id and a hash of the input, as uploads get)')
    .addOption(budgetOption)
    .addOption(openAiBatchOption)
    .option('--wait', 'follow the execution state by state until it ends; exit 1 if it fails')
    .addOption(pollOption)
    .addOption(jsonOption)
    .action(action(async () => (await import('./commands/start.ts')).startCommand));
  cli
    .command('status')
    .description('follow an execution state by state until it ends and print its result; exit 1 if it failed')
    .argument('<executionArn>', 'as `avatars start` printed it')
    .addOption(pollOption)
    .addOption(jsonOption)
    .action(action(async () => (await import('./commands/start.ts')).statusCommand));
  cli
    .command('dev')
    .description('keep the embedded S3 running and run the workflow locally for every persona file put under personas/')
    .addOption(dataOption)
    .option('--out <dir>', 'where to save each persona\u2019s images', 'out')
    .addOption(faultOption)
    .addOption(latencyOption)
    .addOption(rpmOption)
    .addOption(retryDelayOption)
    .action(action(async () => (await import('./commands/dev.ts')).devCommand));
  cli
    .command('split')
    .description('split grid images into DIR/<grid name>/img_<i>.png, row-major')
    .argument('<grid...>', 'grid image files')
    .requiredOption('--out <dir>', 'output folder')
    .option('--rows <n>', 'rows in each grid', int('--rows'), 2)
    .option('--cols <n>', 'columns in each grid', int('--cols'), 2)
    .addOption(new Option('--format <format>', 'tile format').choices(['png', 'webp', 'jpeg']).default('png'))
    .option('--seams', 'also cut a grid drawn without gutters, at its strongest seams (without it, an image with no gutters is refused as no grid)')
    .action(action(async () => (await import('./commands/split.ts')).splitCommand));
  cli
    .command('verify')
    .description('check the C2PA manifest of avatar files: valid, trusted, who signed, what made them; exit 1 if one has none or is invalid')
    .argument('<image...>', 'PNG, JPEG or WebP files')
    .option('--trust <pem...>', 'CA certificates to trust (PEM); the local development CA under --data is trusted too', [])
    .addOption(dataOption)
    .addOption(jsonOption)
    .action(action(async () => (await import('./commands/verify.ts')).verifyCommand));
  cli
    .command('budget')
    .description('print what the account\u2019s image calls spent on a day (UTC), and by which batches, from IMAGE_BUDGET_TABLE')
    .option('--day <YYYY-MM-DD>', 'another day than today')
    .addOption(jsonOption)
    .action(action(async () => (await import('./commands/budget.ts')).budgetCommand));
  cli
    .command('config')
    .description('print the settings a run uses (cdk.json context, then the environment) and where each came from')
    .option('--markdown', 'print every setting as README\u2019s configuration table')
    .action(action(async () => (await import('./commands/config.ts')).configCommand));
  for (const command of cli.commands) command.showHelpAfterError(`(avatars ${command.name()} --help shows its usage)`);
  return cli;
}
