/**
 * `avatars`: parses the command line (the commands are in program.ts) and reports what went
 * wrong for a person to fix. Started through cli.mjs.
 */
const { program } = await import('./program.ts');
program()
  .parseAsync()
  .catch(async (error: Error) => {
    const { UsageError } = await import('./usage-error.ts');
    // Usage errors and bad settings are the message alone; anything else (AWS SDK errors: no
    // credentials, an unknown state machine) also names the error. The stack only with --verbose.
    const plain = error instanceof UsageError || error.name === 'ConfigurationError';
    const stack = process.argv.includes('--verbose') && !plain && error.stack ? `\n${error.stack}` : '';
    process.stderr.write(`avatars: ${plain ? error.message : `${error.name}: ${error.message}`}${stack}\n`);
    process.exitCode = 2;
  });
