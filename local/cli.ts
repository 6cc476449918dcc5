/**
 * `avatars`: parses the command line (the commands are in program.ts) and reports what went
 * wrong for a person to fix. Started through cli.mjs.
 */
const { program } = await import('./program.ts');
program()
  .parseAsync()
  .catch(async (error: Error) => {
    const { UsageError } = await import('./commands/common.ts');
    // AWS SDK errors (no credentials, unknown state machine or execution) and bad settings are the user's to fix: no stack.
    const plain = error instanceof UsageError || error.name === 'ConfigurationError';
    const fromAws = '$metadata' in error || /ProviderError$/.test(error.name);
    process.stderr.write(`avatars: ${plain ? error.message : fromAws ? `${error.name}: ${error.message}` : (error.stack ?? error.message)}\n`);
    process.exitCode = 2;
  });
