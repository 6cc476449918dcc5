import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildApp } from '../infra/app.ts';
import { projectRoot } from '../infra/context.ts';
import { LAMBDA_SERVICE_ERRORS } from '../infra/error-policy.ts';
import { allStates, workflowFromTemplate, type AslState } from '../local/definition.ts';
import { stageNames } from '../lambdas/stages.ts';
import { tempDir } from './support.ts';

const outdir = tempDir('synth');
const { stack } = buildApp({ bundle: false, outdir });
const template = Template.fromStack(stack);
const { definition } = workflowFromTemplate(template.toJSON() as never);
const states = Object.fromEntries(allStates(definition));
const retriedOn = (state: AslState) => ((state.Retry ?? []) as { ErrorEquals: string[] }[]).flatMap((r) => r.ErrorEquals);
const caughtOn = (state: AslState) => ((state.Catch ?? []) as { ErrorEquals: string[]; Next: string }[]);

/** Logical id → stage, for the functions that run our code (CDK adds helper functions of its own). */
function stageFunctionIds(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(template.findResources('AWS::Lambda::Function'))
      .filter(([, f]) => f.Properties.Environment?.Variables?.STAGE)
      .map(([id, f]) => [id, f.Properties.Environment.Variables.STAGE]),
  );
}

function stageFunctions(): Record<string, { [key: string]: any }> {
  const all = template.findResources('AWS::Lambda::Function');
  return Object.fromEntries(Object.entries(stageFunctionIds()).map(([id, stage]) => [stage, all[id]!]));
}

function statementsOf(stage: string): { Action: string | string[]; Effect: string; Resource: unknown }[] {
  const roleId = stageFunctions()[stage]!.Properties.Role['Fn::GetAtt'][0];
  const policies = Object.values(template.findResources('AWS::IAM::Policy')).filter((p) => p.Properties.Roles.some((r: { Ref: string }) => r.Ref === roleId));
  return policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
}

describe('the synthesized stack', () => {
  it('has one Lambda per stage, all on the Node 24 runtime', () => {
    const functions = Object.values(stageFunctions());
    expect(functions.map((f) => f.Properties.Environment.Variables.STAGE).sort()).toEqual([...stageNames].sort());
    for (const fn of functions) expect(fn.Properties.Runtime).toBe('nodejs24.x');
  });

  it('keeps the bucket encrypted, private, TLS-only, and expires intermediate run files', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      BucketEncryption: Match.objectLike({}),
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
      LifecycleConfiguration: { Rules: Match.arrayWith([Match.objectLike({ Prefix: 'runs/', ExpirationInDays: 7, Status: 'Enabled' })]) },
    });
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
    });
  });

  it('references the OpenAI key from Secrets Manager and never puts it in the template', () => {
    const text = JSON.stringify(template.toJSON());
    expect(text).not.toMatch(/OPENAI_API_KEY"/);
    const imageFn = stageFunctions()['generate-base']!;
    expect(JSON.stringify(imageFn.Properties.Environment.Variables.OPENAI_API_KEY_SECRET_ARN)).toContain('persona-avatars/openai-api-key');
  });

  it('names the C2PA signing secret to publish only, the one stage allowed to read it', () => {
    const readsSigningSecret = (stage: string) =>
      statementsOf(stage).some((s) => [s.Action].flat().includes('secretsmanager:GetSecretValue') && JSON.stringify(s.Resource).includes('persona-avatars/c2pa-signing'));
    for (const [stage, fn] of Object.entries(stageFunctions())) {
      const named = fn.Properties.Environment.Variables.C2PA_SIGNING_SECRET_ARN;
      expect(named ? JSON.stringify(named) : undefined, stage).toEqual(stage === 'publish' ? expect.stringContaining('secret:persona-avatars/c2pa-signing') : undefined);
      expect(readsSigningSecret(stage), stage).toBe(stage === 'publish');
    }
  });

  it('takes the signing secret\u2019s name from context', () => {
    const { stack: named } = buildApp({ bundle: false, validate: false, outdir, context: { c2paSigningSecretName: 'acme/avatars-c2pa' } });
    const publish = Object.values(Template.fromStack(named).findResources('AWS::Lambda::Function')).find((f) => f.Properties.Environment?.Variables?.STAGE === 'publish')!;
    expect(JSON.stringify(publish.Properties.Environment.Variables.C2PA_SIGNING_SECRET_ARN)).toContain('secret:acme/avatars-c2pa');
  });

  it('keeps the account\u2019s image turns and spending in one on-demand table, read and written by the image stages only', () => {
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
      AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
      BillingMode: 'PAY_PER_REQUEST',
      TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
    });
    const tableId = Object.keys(template.findResources('AWS::DynamoDB::Table'))[0]!;
    expect(template.toJSON().Outputs.ImageBudgetTable.Value).toEqual({ Ref: tableId });
    for (const [stage, fn] of Object.entries(stageFunctions())) {
      // The image stages, and batch mode's rounds, which reserve and settle OpenAI batch lines.
      const draws = ['generate-base', 'generate-grid', 'submit-round', 'collect-round'].includes(stage);
      expect(fn.Properties.Environment.Variables.IMAGE_BUDGET_TABLE, stage).toEqual(draws ? { Ref: tableId } : undefined);
      const actions = statementsOf(stage).filter((s) => JSON.stringify(s.Resource).includes(tableId)).flatMap((s) => [s.Action].flat());
      expect(actions.sort(), stage).toEqual(draws ? ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'] : []);
    }
  });

  it('takes the model, size, quality and image count defaults from context', () => {
    const custom = Template.fromStack(buildApp({ bundle: false, validate: false, outdir, context: { images: 8, imageModel: 'gpt-image-2', imageSize: '1024x1536', imageQuality: 'high' } }).stack);
    const variables = Object.values(custom.findResources('AWS::Lambda::Function')).filter((f) => f.Properties.Environment?.Variables?.STAGE).map((f) => f.Properties.Environment.Variables);
    for (const v of variables) expect(v).toMatchObject({ DEFAULT_IMAGES: '8', IMAGE_MODEL: 'gpt-image-2', IMAGE_SIZE: '1024x1536', IMAGE_QUALITY: 'high' });
    expect(() => buildApp({ bundle: false, outdir, context: { images: 0 } })).toThrow(/context images/);
  });

  it('scopes each function to the bucket prefixes it needs', () => {
    const resourcesOf = (stage: string) => JSON.stringify(statementsOf(stage).filter((s) => String(s.Action).includes('s3:')));
    expect(resourcesOf('publish')).toContain('/avatars/*');
    expect(resourcesOf('publish')).toContain('/runs/*');
    expect(resourcesOf('generate-grid')).toContain('/runs/*');
    expect(resourcesOf('generate-grid')).not.toContain('/avatars/');
    expect(resourcesOf('record-failure')).toContain('/avatars/*/failures/*');
    expect(resourcesOf('record-failure')).not.toContain('/runs/');
    expect(resourcesOf('start-from-upload')).toContain('/personas/*');
    expect(resourcesOf('start-from-upload')).toContain('/rejected/*');
    expect(resourcesOf('start-from-upload')).not.toMatch(/\/(runs|avatars)\//);
  });

  it('gives each stage explicit S3 actions on its prefixes only: no listing, no legal hold or retention, deletes only of the trigger\u2019s reports and the rounds\u2019 request files', () => {
    for (const stage of stageNames) {
      const s3 = statementsOf(stage).filter((st) => JSON.stringify(st.Action).includes('s3:'));
      const actions = s3.flatMap((st) => [st.Action].flat());
      expect(actions.filter((a) => /s3:List|LegalHold|Retention|\*/.test(a)), stage).toEqual([]);
      expect(actions.includes('s3:DeleteObject'), stage).toBe(stage === 'start-from-upload' || stage === 'submit-round');
      const deletes = s3.filter((st) => [st.Action].flat().includes('s3:DeleteObject'));
      for (const st of deletes) expect(JSON.stringify(st.Resource), stage).toMatch(stage === 'submit-round' ? /\/batches\/\*\/rounds\/\*"/ : /\/rejected\/\*"/);
      for (const st of s3) expect(JSON.stringify(st.Resource), stage).toMatch(/\/(runs|avatars|personas|rejected|batches)\//);
    }
  });

  it('acknowledges each IAM5 wildcard by what it applies to, so a new one is not hidden', () => {
    const suppressions = (stack.templateOptions.metadata?.cdk_nag as { rules_to_suppress: { id: string; applies_to?: unknown[] }[] }).rules_to_suppress;
    const iam5 = suppressions.filter((s) => s.id === 'AwsSolutions-IAM5');
    expect(iam5.length).toBeGreaterThan(0);
    for (const s of iam5) expect(s.applies_to?.length).toBeGreaterThan(0);
  });

  it('starts a run for every persona file uploaded under personas/, as JSON or JSON Lines', () => {
    const triggerId = Object.entries(stageFunctionIds()).find(([, stage]) => stage === 'start-from-upload')![0];
    const notifications = Object.values(template.findResources('Custom::S3BucketNotifications'));
    expect(notifications).toHaveLength(1);
    const configs = notifications[0]!.Properties.NotificationConfiguration.LambdaFunctionConfigurations as { Events: string[]; LambdaFunctionArn: unknown; Filter: { Key: { FilterRules: { Name: string; Value: string }[] } } }[];
    const filters = configs.map((c) => {
      expect(c.Events).toEqual(['s3:ObjectCreated:*']);
      expect(c.LambdaFunctionArn).toEqual({ 'Fn::GetAtt': [triggerId, 'Arn'] });
      return Object.fromEntries(c.Filter.Key.FilterRules.map((r) => [r.Name.toLowerCase(), r.Value]));
    });
    // Any suffix, in any case: the trigger reports files that are not personas.
    expect(filters).toEqual([{ prefix: 'personas/' }]);
  });

  it('keeps upload notifications the trigger failed on three times in an encrypted queue', () => {
    const triggerId = Object.entries(stageFunctionIds()).find(([, stage]) => stage === 'start-from-upload')![0];
    const queueId = Object.keys(template.findResources('AWS::SQS::Queue'))[0]!;
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: triggerId },
      MaximumRetryAttempts: 2,
      DestinationConfig: { OnFailure: { Destination: { 'Fn::GetAtt': [queueId, 'Arn'] } } },
    });
    template.hasResourceProperties('AWS::SQS::Queue', { SqsManagedSseEnabled: true });
  });

  it('lets the upload trigger start the persona and batch workflows, and read their executions\u2019 status, and nothing else', () => {
    const machines = Object.entries(template.findResources('AWS::StepFunctions::StateMachine'));
    const idOf = (name: string) => machines.find(([, m]) => m.Properties.StateMachineName === name)![0];
    const [persona, batch] = [idOf('PersonaAvatars'), idOf('PersonaAvatars-Batch')];
    const states = statementsOf('start-from-upload').filter((s) => String(s.Action).includes('states:'));
    const text = JSON.stringify(states);
    expect([...new Set(states.flatMap((s) => [s.Action].flat()))].sort()).toEqual(['states:DescribeExecution', 'states:StartExecution']);
    expect(text).toContain(persona);
    expect(text).toContain(batch);
    const variables = stageFunctions()['start-from-upload']!.Properties.Environment.Variables;
    expect(variables.STATE_MACHINE_ARN).toEqual({ Ref: persona });
    expect(variables.BATCH_STATE_MACHINE_ARN).toEqual({ Ref: batch });
    for (const stage of stageNames.filter((s) => s !== 'start-from-upload' && s !== 'plan-batch')) {
      expect(JSON.stringify(statementsOf(stage)), stage).not.toContain('states:');
    }
  });

  it('lets plan-batch only list the persona workflow\u2019s executions, to step past names a failed run took', () => {
    const persona = Object.entries(template.findResources('AWS::StepFunctions::StateMachine')).find(([, m]) => m.Properties.StateMachineName === 'PersonaAvatars')![0];
    const states = statementsOf('plan-batch').filter((s) => String(s.Action).includes('states:'));
    expect(states.map((s) => s.Action)).toEqual(['states:ListExecutions']);
    expect(states[0].Resource).toEqual({ Ref: persona });
    expect(stageFunctions()['plan-batch']!.Properties.Environment.Variables.STATE_MACHINE_ARN).toEqual({ Ref: persona });
  });

  it('lets the batch follow and stop its child executions, not its own or another batch\u2019s', () => {
    const batchPolicy = Object.entries(template.findResources('AWS::IAM::Policy')).find(([id]) => id.startsWith('BatchStateMachineRoleDefaultPolicy'))![1];
    const follow = batchPolicy.Properties.PolicyDocument.Statement.find((s: { Action: unknown }) => JSON.stringify(s.Action).includes('states:DescribeExecution'));
    // execution:PersonaAvatars:* — CDK's default, execution:PersonaAvatars*, also matches PersonaAvatars-Batch.
    expect(JSON.stringify(follow.Resource)).toMatch(/":execution:",\{"Fn::Select":\[6,\{"Fn::Split":\[":",\{"Ref":"Workflow[^"]+"\}\]\}\]\},":\*"\]\]\}$/);
  });

  it('serves avatars/ through CloudFront with Origin Access Control, HTTPS only, while the bucket stays private', () => {
    const [distributionId, distribution] = Object.entries(template.findResources('AWS::CloudFront::Distribution'))[0]!;
    const config = distribution.Properties.DistributionConfig;
    expect(Object.keys(template.findResources('AWS::CloudFront::OriginAccessControl'))).toHaveLength(1);
    expect(config.Origins[0].OriginAccessControlId).toBeDefined();
    for (const behavior of [config.DefaultCacheBehavior, ...config.CacheBehaviors]) expect(behavior.ViewerProtocolPolicy).toBe('https-only');
    expect(config.CacheBehaviors.map((b: { PathPattern: string }) => b.PathPattern)).toEqual(['avatars/*/manifest.json']);
    const policies = JSON.stringify(template.findResources('AWS::S3::BucketPolicy'));
    const read = Object.values(template.findResources('AWS::S3::BucketPolicy'))
      .flatMap((p) => p.Properties.PolicyDocument.Statement)
      .find((st: { Principal?: { Service?: string } }) => st.Principal?.Service === 'cloudfront.amazonaws.com');
    expect(read).toMatchObject({ Action: 's3:GetObject', Effect: 'Allow' });
    expect(JSON.stringify(read.Resource)).toContain('/avatars/*');
    expect(JSON.stringify(read.Condition)).toContain(distributionId);
    expect(policies).not.toContain('"Principal":{"AWS":"*"},"Effect":"Allow"');
    template.hasResourceProperties('AWS::S3::Bucket', { PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true } });
  });

  it('gives published URLs under the distribution, unless publicBaseUrl names a domain', () => {
    const publish = stageFunctions().publish!.Properties.Environment.Variables;
    expect(JSON.stringify(publish.PUBLIC_BASE_URL)).toContain('DomainName');
    const custom = Template.fromStack(buildApp({ bundle: false, validate: false, outdir, context: { publicBaseUrl: 'https://avatars.example.com' } }).stack);
    const variables = Object.values(custom.findResources('AWS::Lambda::Function')).find((f) => f.Properties.Environment?.Variables?.STAGE === 'publish')!.Properties.Environment.Variables;
    expect(variables.PUBLIC_BASE_URL).toBe('https://avatars.example.com');
  });

  it('keeps every function\u2019s logs and the workflow\u2019s for the retention set, 30 days by default', () => {
    const groups = template.findResources('AWS::Logs::LogGroup');
    for (const fn of Object.values(stageFunctions())) {
      const group = groups[fn.Properties.LoggingConfig.LogGroup.Ref];
      expect(group?.Properties.RetentionInDays, fn.Properties.Environment.Variables.STAGE).toBe(30);
    }
    expect(Object.values(groups).every((g) => g.Properties.RetentionInDays === 30)).toBe(true);
  });

  it('raises alarms on failed, timed-out and stopped runs, failed batches and dead-lettered uploads, mailed when alarmEmail is set', () => {
    const alarms = Object.values(template.findResources('AWS::CloudWatch::Alarm'));
    expect(alarms.map((a) => a.Properties.MetricName).filter(Boolean).sort()).toEqual(['ApproximateNumberOfMessagesVisible', 'ExecutionsAborted', 'ExecutionsFailed', 'ExecutionsFailed', 'ExecutionsTimedOut', 'TurnWaitSeconds']);
    const topicId = Object.keys(template.findResources('AWS::SNS::Topic'))[0]!;
    for (const alarm of alarms) expect(alarm.Properties.AlarmActions).toEqual([{ Ref: topicId }]);
    expect(template.findResources('AWS::SNS::Subscription')).toEqual({});
    const mailed = Template.fromStack(buildApp({ bundle: false, validate: false, outdir, context: { alarmEmail: 'ops@example.com' } }).stack);
    mailed.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'ops@example.com' });
  });

  it('alarms on a 429 share above 5% over 5 minutes, on turns more than an hour away and, with a daily cap, on spending at 80% of it', () => {
    const alarmOn = (t: Template, name: string) => Object.values(t.findResources('AWS::CloudWatch::Alarm')).find((a) => JSON.stringify(a.Properties).includes(name))?.Properties;
    expect(alarmOn(template, 'ImageCallsRateLimited')).toMatchObject({ Threshold: 5, ComparisonOperator: 'GreaterThanThreshold', Metrics: expect.arrayContaining([expect.objectContaining({ Expression: '100 * limited / FILL(calls, 1)' })]) });
    expect(alarmOn(template, 'TurnWaitSeconds')).toMatchObject({ Namespace: 'PersonaAvatars', Statistic: 'Maximum', Threshold: 3600 });
    // No cap, nothing to near.
    expect(alarmOn(template, 'SpentTodayUsd')).toBeUndefined();
    const capped = Template.fromStack(buildApp({ bundle: false, validate: false, outdir, context: { maxSpendUsdPerDay: 50 } }).stack);
    expect(alarmOn(capped, 'SpentTodayUsd')).toMatchObject({ Namespace: 'PersonaAvatars', Statistic: 'Maximum', Threshold: 40, Dimensions: [{ Name: 'service', Value: 'persona-avatars' }] });
  });

  it('has a dashboard of images against the limit, 429s, spending against the cap and turn waits, from the metrics the stages write', () => {
    const body = JSON.stringify(Object.values(template.findResources('AWS::CloudWatch::Dashboard'))[0]!.Properties.DashboardBody);
    for (const name of ['ImagesDrawn', 'ImageCalls', 'ImageCostUsd', 'ImageCallsRateLimited', 'SpentTodayUsd', 'TurnWaitSeconds', 'StageErrors', 'BaseRedraws', 'AvatarsPublished', 'PersonasFailed']) {
      expect(body, name).toContain(`\\"PersonaAvatars\\",\\"${name}\\"`);
    }
    expect(Object.keys(template.toJSON().Outputs)).toContain('DashboardUrl');
  });

  it('records runs that timed out, were stopped or failed without a record, which the workflow\u2019s own Catch cannot see', () => {
    const recordId = Object.entries(stageFunctionIds()).find(([, stage]) => stage === 'record-failure')![0];
    const rules = Object.values(template.findResources('AWS::Events::Rule'));
    expect(rules.map((rule) => rule.Properties.EventPattern.detail.status)).toEqual([['TIMED_OUT', 'ABORTED'], ['FAILED']]);
    for (const rule of rules) expect(rule.Properties.Targets[0].Arn).toEqual({ 'Fn::GetAtt': [recordId, 'Arn'] });
    // A failed run's own error names what went wrong (States.Runtime…), not just its status.
    expect(rules[1]!.Properties.Targets[0].InputTransformer.InputPathsMap).toMatchObject({ 'detail-error': '$.detail.error' });
  });

  it('passes the cdk-nag AwsSolutions checks, every acknowledgement with a reason', () => {
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    expect(errors).toEqual([]);
    const suppressions = (stack.templateOptions.metadata?.cdk_nag as { rules_to_suppress: { reason: string }[] } | undefined)?.rules_to_suppress ?? [];
    expect(suppressions.length).toBeGreaterThan(0);
    for (const s of suppressions) expect(s.reason.length).toBeGreaterThan(30);
  });
});

describe('the state machine definition', () => {
  it('writes the prompt and generates the base image side by side', () => {
    const parallel = definition.States.PromptAndBase!;
    expect(parallel.Type).toBe('Parallel');
    expect(parallel.Branches!.map((b) => b.StartAt)).toEqual(['WritePrompt', 'NoBaseRedrawsYet']);
    expect(parallel.Branches![1]!.States.NoBaseRedrawsYet!.Next).toBe('GenerateBase');
  });

  it('checks the base before any grid, and draws it again from the prompt the check wrote, as long as it asks', () => {
    const states = definition.States.PromptAndBase!.Branches![1]!.States;
    for (const drawn of ['GenerateBaseTurn', 'GenerateBaseSaferTurn', 'RedrawBaseTurn']) expect(states[drawn]!.Default, drawn).toBe('CheckBase');
    expect(states.CheckBase!.Next).toBe('BaseAccepted');
    expect(states.BaseAccepted!.Choices).toEqual([{ Variable: '$.checked.redraw', IsPresent: true, Next: 'RedrawBase' }]);
    expect(states.BaseAccepted!.Default).toBe('BaseDrawn');
    expect(states.RedrawBase).toMatchObject({ Parameters: { 'promptKey.$': '$.checked.redraw.promptKey' } });
  });

  it('generates one grid per item in a bounded inline Map and splits each grid right after it', () => {
    const map = definition.States.GenerateGrids!;
    expect(map.Type).toBe('Map');
    expect(map.MaxConcurrency).toBe(4);
    expect((map.ItemProcessor as unknown as { ProcessorConfig: { Mode: string } }).ProcessorConfig.Mode).toBe('INLINE');
    for (const name of ['GenerateGrid', 'GenerateGridSafer']) {
      expect(states[name]!.Next).toBe(`${name}Turn`);
      expect(states[`${name}Turn`]!.Default, name).toBe('SplitGrid');
    }
  });

  it('retries Lambda service errors, throttles included, on every task', () => {
    for (const [name, state] of Object.entries(states).filter(([, s]) => s.Type === 'Task')) {
      expect(retriedOn(state), name).toEqual(expect.arrayContaining([...LAMBDA_SERVICE_ERRORS, 'Lambda.TooManyRequestsException']));
    }
  });

  it('retries RateLimited with exponential backoff and full jitter on every API stage', () => {
    for (const name of ['WritePrompt', 'GenerateBase', 'GenerateGrid', 'RewriteGridPrompt', 'GenerateGridSafer']) {
      const retry = (states[name]!.Retry as Record<string, unknown>[]).find((r) => (r.ErrorEquals as string[]).includes('RateLimited'))!;
      expect(retry, name).toMatchObject({ BackoffRate: 2, JitterStrategy: 'FULL', MaxAttempts: 6 });
      // Enough total wait to outlast a per-minute limit.
      const total = [0, 1, 2, 3, 4, 5].reduce((sum, i) => sum + Math.min((retry.IntervalSeconds as number) * 2 ** i, retry.MaxDelaySeconds as number), 0);
      expect(total).toBeGreaterThan(120);
    }
  });

  it('retries ImageTimeout and UpstreamError a few times', () => {
    const retry = (states.GenerateGrid!.Retry as Record<string, unknown>[]).find((r) => (r.ErrorEquals as string[]).includes('ImageTimeout'))!;
    expect(retry.ErrorEquals).toEqual(['ImageTimeout', 'UpstreamError']);
    expect(retry.MaxAttempts).toBe(3);
  });

  it('waits for a far image turn in a Wait until it comes, then runs the stage again, on every image stage: no retrier to run out', () => {
    for (const name of ['GenerateBase', 'GenerateBaseSafer', 'GenerateGrid', 'GenerateGridSafer']) {
      const later = `${states[name]!.ResultPath}.later`;
      expect(states[`${name}Turn`], name).toMatchObject({ Type: 'Choice', Choices: [{ Variable: later, IsPresent: true, Next: `WaitFor${name}Turn` }] });
      expect(states[`WaitFor${name}Turn`], name).toEqual({ Type: 'Wait', TimestampPath: later, Next: name });
    }
    const retried = Object.values(states).flatMap((s) => ((s.Retry ?? []) as { ErrorEquals: string[] }[]).flatMap((r) => r.ErrorEquals));
    expect(retried).not.toContain('ImageTurnLater');
    // Waiting is never what fails a run: days of queue fit in its timeout.
    expect(definition.TimeoutSeconds).toBeGreaterThanOrEqual(24 * 3600);
  });

  it('retries a persona\u2019s start on Step Functions\u2019 own limit under the name the integration gives it', () => {
    const batch = workflowFromTemplate(template.toJSON() as never, 'PersonaAvatars-Batch').definition;
    const runPersona = Object.fromEntries(allStates(batch)).RunPersona!;
    // StartExecution's ExecutionLimitExceeded, prefixed by the integration; no "Exception".
    expect(retriedOn(runPersona)).toContain('StepFunctions.ExecutionLimitExceeded');
    expect(retriedOn(runPersona).filter((e) => e.endsWith('LimitExceededException'))).toEqual([]);
  });

  it('never retries ContentPolicyViolation, InvalidPersona, ConfigurationError or BudgetExhausted', () => {
    for (const state of Object.values(states)) {
      expect(retriedOn(state)).not.toContain('BudgetExhausted');
      expect(retriedOn(state)).not.toContain('ContentPolicyViolation');
      expect(retriedOn(state)).not.toContain('InvalidPersona');
      expect(retriedOn(state)).not.toContain('ConfigurationError');
      expect(retriedOn(state)).not.toContain('States.ALL');
    }
  });

  it('answers a content-policy refusal with one safer rewrite, for the base and for each grid', () => {
    expect(caughtOn(states.GenerateBase!)).toEqual([expect.objectContaining({ ErrorEquals: ['ContentPolicyViolation'], Next: 'RewriteBasePrompt' })]);
    expect(states.RewriteBasePrompt!.Next).toBe('GenerateBaseSafer');
    expect(caughtOn(states.GenerateBaseSafer!)).toEqual([]);
    expect(caughtOn(states.GenerateGrid!)).toEqual([expect.objectContaining({ ErrorEquals: ['ContentPolicyViolation'], Next: 'RewriteGridPrompt' })]);
    expect(states.RewriteGridPrompt!.Next).toBe('GenerateGridSafer');
    expect(caughtOn(states.GenerateGridSafer!)).toEqual([]);
  });

  it('draws a grid again, at most twice, when it has the wrong number of panels or another person in it', () => {
    expect(states.GridAttempt!.Retry).toEqual([expect.objectContaining({ ErrorEquals: ['GridLayoutMismatch', 'IdentityMismatch'], MaxAttempts: 2 })]);
  });

  it('records every failure and ends in a Fail state named after the cause', () => {
    for (const name of ['PlanRun', 'PromptAndBase', 'GenerateGrids', 'Publish']) {
      expect(caughtOn(states[name]!), name).toEqual([expect.objectContaining({ ErrorEquals: ['States.ALL'], Next: 'RecordFailure' })]);
    }
    expect(states.RecordFailure!.Next).toBe('RunFailed');
    expect(states.RunFailed).toMatchObject({ Type: 'Fail', ErrorPath: '$.failure.error', CausePath: '$.failure.cause' });
    expect(caughtOn(states.RecordFailure!)).toEqual([expect.objectContaining({ Next: 'RunFailedUnrecorded' })]);
  });

  it('times out every task after its Lambda would, so the function reports first', () => {
    for (const [name, state] of Object.entries(states).filter(([, s]) => s.Type === 'Task')) {
      expect(state.TimeoutSeconds, name).toBeGreaterThan(60);
    }
    expect(states.GenerateGrid!.TimeoutSeconds).toBeGreaterThan(900);
  });

  it('passes only keys and small metadata between states, never image bytes', () => {
    const parameters = Object.values(states).flatMap((s) => [s.Parameters, s.ItemSelector, s.ResultSelector].filter(Boolean));
    const values = JSON.stringify(parameters);
    expect(values).not.toMatch(/b64|base64|Body|bytes/i);
    const leaves: string[] = [];
    const walk = (v: unknown) => (typeof v === 'object' && v ? Object.values(v).forEach(walk) : leaves.push(String(v)));
    walk(parameters);
    for (const leaf of leaves) expect(leaf.length).toBeLessThan(200);
  });
});

describe('the synthesized batch workflow', () => {
  const batch = workflowFromTemplate(template.toJSON() as never, 'PersonaAvatars-Batch');
  const batchStates = Object.fromEntries(allStates(batch.definition));
  const map = batchStates.RunPersonas!;

  it('reads the personas with a Distributed Map from the JSON Lines items file in S3', () => {
    expect(map.Type).toBe('Map');
    expect(map.ItemProcessor).toMatchObject({ ProcessorConfig: { Mode: 'DISTRIBUTED', ExecutionType: 'STANDARD' } });
    expect(map.ItemReader).toMatchObject({ Resource: 'arn:aws:states:::s3:getObject', ReaderConfig: { InputType: 'JSONL' }, Parameters: { 'Key.$': '$.plan.itemsKey' } });
  });

  it('runs each persona as a child execution of the persona workflow, named from its request', () => {
    const run = batchStates.RunPersona!;
    expect(run.Resource).toBe('arn:aws:states:::states:startExecution.sync:2');
    expect(run.Parameters).toEqual({
      StateMachineArn: workflowFromTemplate(template.toJSON() as never).stateMachineArn,
      'Name.$': '$.name',
      'Input.$': 'States.JsonMerge($.input, $.startedBy, false)',
    });
    // Each waits for its turn first: the pacing to the account's image rate.
    expect(batchStates.WaitTurn).toMatchObject({ Type: 'Wait', TimestampPath: '$.notBefore', Next: 'LinkToParent' });
    // Then names the execution starting it, the Map's own ($$.Execution.Id there), as the service docs ask.
    expect(batchStates.LinkToParent).toMatchObject({ Type: 'Pass', Parameters: { 'AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$': '$$.Execution.Id' }, ResultPath: '$.startedBy', Next: 'RunPersona' });
  });

  it('tolerates any number of failed personas, each caught and reported, and writes the results to S3', () => {
    expect(map.ToleratedFailurePercentage).toBe(100);
    expect(caughtOn(batchStates.RunPersona!)).toEqual([expect.objectContaining({ ErrorEquals: ['States.ALL'], Next: 'PersonaFailed' })]);
    expect(map.ResultWriter).toMatchObject({ Resource: 'arn:aws:states:::s3:putObject', Parameters: { 'Prefix.$': '$.plan.resultsPrefix' } });
    expect(map.MaxConcurrencyPath).toBe('$.plan.concurrency');
    expect(map.Next).toBe('AfterPersonas');
    expect(batchStates.AfterPersonas).toMatchObject({ Choices: [{ Variable: '$.plan.apiMode', StringEquals: 'batch', Next: 'RedrawRound' }], Default: 'ReportBatch' });
    expect(batch.taskStages).toEqual({ PlanBatch: 'plan-batch', ReportBatch: 'report-batch', SubmitRound: 'submit-round', CollectRound: 'collect-round', RedrawRound: 'submit-round' });
  });

  it('draws a batch in OpenAI\u2019s Batch API in rounds: submit, a Wait-based poll, collect, again or on to the personas', () => {
    expect(batchStates.AnythingToRun!.Choices).toEqual(
      expect.arrayContaining([{ And: [{ Variable: '$.plan.toRun', NumericGreaterThan: 0 }, { Variable: '$.plan.apiMode', StringEquals: 'batch' }], Next: 'SubmitRound' }]),
    );
    expect(batchStates.SubmitRound).toMatchObject({ Type: 'Task', ResultPath: '$.round', Next: 'RoundSent' });
    expect(batchStates.RoundSent!.Choices).toEqual([{ Variable: '$.round.status', StringEquals: 'nothing', Next: 'RunPersonas' }]);
    expect(batchStates.RoundSent!.Default).toBe('WaitForRound');
    // Step Functions waits, not a Lambda: the stages return at once, the wait grows each time.
    expect(batchStates.WaitForRound).toEqual({ Type: 'Wait', SecondsPath: '$.round.waitSeconds', Next: 'CollectRound' });
    expect(batchStates.CollectRound).toMatchObject({ Type: 'Task', ResultPath: '$.round', Next: 'RoundDone' });
    expect(batchStates.RoundDone!.Choices).toEqual([
      { Variable: '$.round.status', StringEquals: 'pending', Next: 'WaitForRound' },
      { Variable: '$.round.next', StringEquals: 'submit', Next: 'SubmitRound' },
    ]);
    expect(batchStates.RoundDone!.Default).toBe('RunPersonas');
    for (const round of ['SubmitRound', 'CollectRound']) expect(caughtOn(batchStates[round]!)).toEqual([expect.objectContaining({ ErrorEquals: ['States.ALL'], Next: 'RunPersonas' })]);
  });

  it('draws grids the identity check refused in a round after the personas ran, and runs those personas again', () => {
    expect(batchStates.RedrawRound).toMatchObject({ Type: 'Task', ResultPath: '$.round', Next: 'AnyRedrawn' });
    expect(batchStates.AnyRedrawn).toMatchObject({ Choices: [{ Variable: '$.round.status', StringEquals: 'nothing', Next: 'ReportBatch' }], Default: 'RunRefusedAgain' });
    // The personas that run again are the redraw plan's: the Map reads its items.
    expect(batchStates.RunRefusedAgain).toMatchObject({ Type: 'Pass', Parameters: { 'plan.$': '$.round.plan' }, Next: 'WaitForRound' });
  });
});

describe('the stack outputs', () => {
  it('carry the names README gives them', () => {
    const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8');
    // "output `X`", "`X` output", and the list "The stack's outputs name … (`X`) …".
    const named = new Set([
      ...[...readme.matchAll(/outputs? `([A-Z]\w+)`/g)].map((m) => m[1]!),
      ...[...readme.matchAll(/`([A-Z]\w+)` output/g)].map((m) => m[1]!),
      ...[...(/The stack's outputs name([^]*?)\n\n/.exec(readme)?.[1] ?? '').matchAll(/\(`([A-Z]\w+)`/g)].map((m) => m[1]!),
    ]);
    expect([...named].sort()).toEqual(['AlarmTopicArn', 'AvatarsUrl', 'BatchStateMachineArn', 'BucketName', 'DashboardUrl', 'FailedUploadsQueueUrl', 'ImageBudgetTable', 'StateMachineArn']);
    expect(Object.keys(template.toJSON().Outputs).sort()).toEqual([...named].sort());
  });
});
