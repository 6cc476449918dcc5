/**
 * IAM, enforced locally as AWS enforces it: every AWS SDK call a stage makes (in the local runner,
 * `avatars invoke` and the specs) is evaluated against that stage's role in the synthesized
 * template, its resources resolved to their local names, by @cloud-copilot/iam-simulate. A call
 * the role does not allow is answered as the service answers it (S3: 403 AccessDenied; DynamoDB,
 * Step Functions, Secrets Manager: AccessDeniedException), through the SDK's own error parsing,
 * with the message AWS gives same-account denials: who, which action, which resource.
 * Calls made outside a stage (the CLI putting a persona file, a spec reading a report) are the
 * user's own and are not checked.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { Readable } from 'node:stream';
import { runSimulation } from '@cloud-copilot/iam-simulate';
import type { Pluggable } from '@smithy/types';
import { awsClientPlugins } from '../lambdas/shared/aws-clients.ts';
import type { StageName } from '../lambdas/stages.ts';

export const LOCAL_REGION = 'us-east-1';
export const LOCAL_ACCOUNT = '000000000000';

interface Statement {
  Effect: 'Allow' | 'Deny';
  Action: string | string[];
  Resource: string | string[];
  Condition?: unknown;
}

export interface PolicyDocument {
  Version: string;
  Statement: Statement[];
}

/** A stage's role as deployed: who it is (for messages) and what its policies allow. */
export interface StageRole {
  stage: StageName;
  /** The role's session as Lambda names it: arn:aws:sts::ACCOUNT:assumed-role/ROLE/FUNCTION. */
  principal: string;
  policies: PolicyDocument[];
}

export type StageRoles = Partial<Record<StageName, StageRole>>;

interface CfnResource {
  Type: string;
  Properties: Record<string, unknown>;
}

/** The local names of the stack's resources, as the stages see them. */
export interface LocalNames {
  bucket: string;
  /** IMAGE_BUDGET_TABLE; unset when the budget is kept in memory (no calls are made). */
  table?: string | undefined;
  /** State machine name → its ARN where the stages reach it. */
  stateMachineArn: (name: string) => string;
}

/** Resolves the intrinsics CDK puts in policies: Join, Select, Split, Ref and GetAtt. */
function resolver(resources: Record<string, CfnResource>, names: LocalNames) {
  const refOf = (id: string): string => {
    if (id === 'AWS::Partition') return 'aws';
    if (id === 'AWS::Region') return LOCAL_REGION;
    if (id === 'AWS::AccountId') return LOCAL_ACCOUNT;
    const resource = resources[id];
    switch (resource?.Type) {
      case 'AWS::S3::Bucket':
        return names.bucket;
      case 'AWS::DynamoDB::Table':
        return names.table ?? id;
      case 'AWS::StepFunctions::StateMachine':
        return names.stateMachineArn(String(resource.Properties.StateMachineName));
      default:
        return id;
    }
  };
  const arnOf = (id: string): string => {
    const type = resources[id]?.Type;
    if (type === 'AWS::S3::Bucket') return `arn:aws:s3:::${names.bucket}`;
    if (type === 'AWS::DynamoDB::Table') return `arn:aws:dynamodb:${LOCAL_REGION}:${LOCAL_ACCOUNT}:table/${refOf(id)}`;
    if (type === 'AWS::IAM::Role') return `arn:aws:iam::${LOCAL_ACCOUNT}:role/${id}`;
    return `arn:aws:local:${LOCAL_REGION}:${LOCAL_ACCOUNT}:${id}`;
  };
  const resolve = (value: unknown): unknown => {
    if (typeof value === 'string' || typeof value === 'number') return value;
    if (Array.isArray(value)) return value.map(resolve);
    const node = value as Record<string, unknown>;
    if ('Ref' in node) return refOf(String(node.Ref));
    if ('Fn::GetAtt' in node) {
      const [id, attribute] = node['Fn::GetAtt'] as [string, string];
      if (attribute !== 'Arn') throw new Error(`local IAM: cannot resolve Fn::GetAtt ${id}.${attribute}`);
      return arnOf(id);
    }
    if ('Fn::Join' in node) {
      const [separator, parts] = node['Fn::Join'] as [string, unknown[]];
      return parts.map(resolve).join(separator);
    }
    if ('Fn::Split' in node) {
      const [separator, text] = node['Fn::Split'] as [string, unknown];
      return String(resolve(text)).split(separator);
    }
    if ('Fn::Select' in node) {
      const [index, list] = node['Fn::Select'] as [number, unknown];
      return (resolve(list) as unknown[])[Number(index)];
    }
    return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, resolve(v)]));
  };
  return resolve;
}

/** Each stage function's role and the policies attached to it, as the template has them. */
export function stageRoles(template: { Resources: Record<string, CfnResource> }, names: LocalNames): StageRoles {
  const resolve = resolver(template.Resources, names);
  const roles: StageRoles = {};
  for (const [functionId, fn] of Object.entries(template.Resources)) {
    const stage = (fn.Properties?.Environment as { Variables?: { STAGE?: StageName } } | undefined)?.Variables?.STAGE;
    if (fn.Type !== 'AWS::Lambda::Function' || !stage) continue;
    const roleId = (fn.Properties.Role as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
    const policies = Object.values(template.Resources)
      .filter((r) => r.Type === 'AWS::IAM::Policy' && (r.Properties.Roles as { Ref: string }[]).some((role) => role.Ref === roleId))
      .map((r) => resolve(r.Properties.PolicyDocument) as PolicyDocument);
    roles[stage] = { stage, principal: `arn:aws:sts::${LOCAL_ACCOUNT}:assumed-role/${roleId}/${functionId}`, policies };
  }
  return roles;
}

/** What IAM authorizes for one SDK command: each action on its resource. */
interface Authorization {
  action: string;
  resource: string;
}

type Input = Record<string, unknown>;

const objectArn = (input: Input) => `arn:aws:s3:::${String(input.Bucket)}/${String(input.Key)}`;
const tableArn = (input: Input) => `arn:aws:dynamodb:${LOCAL_REGION}:${LOCAL_ACCOUNT}:table/${String(input.TableName)}`;

/**
 * A secret named by its name or a partial ARN is evaluated as the full ARN Secrets Manager gives
 * the secret (the name, a hyphen and six characters), as AWS does for a secret that exists. For one
 * that does not, AWS answers AccessDeniedException to a role granted `NAME-??????`, before any
 * ResourceNotFoundException: the Secrets Manager peer answers that, since only it knows what exists.
 */
const secretArn = (id: string) => {
  const arn = id.startsWith('arn:') ? id : `arn:aws:secretsmanager:${LOCAL_REGION}:${LOCAL_ACCOUNT}:secret:${id}`;
  return /-[A-Za-z0-9]{6}$/.test(arn) ? arn : `${arn}-LOCAL0`;
};

/**
 * The IAM actions of each command the project sends (Service Authorization Reference: "Actions,
 * resources, and condition keys"; S3: "Required permissions for Amazon S3 API operations").
 */
const AUTHORIZATIONS: Record<string, (input: Input) => Authorization[]> = {
  GetObjectCommand: (i) => [{ action: 's3:GetObject', resource: objectArn(i) }],
  HeadObjectCommand: (i) => [{ action: 's3:GetObject', resource: objectArn(i) }],
  PutObjectCommand: (i) => [{ action: 's3:PutObject', resource: objectArn(i) }],
  CreateMultipartUploadCommand: (i) => [{ action: 's3:PutObject', resource: objectArn(i) }],
  UploadPartCommand: (i) => [{ action: 's3:PutObject', resource: objectArn(i) }],
  CompleteMultipartUploadCommand: (i) => [{ action: 's3:PutObject', resource: objectArn(i) }],
  AbortMultipartUploadCommand: (i) => [{ action: 's3:AbortMultipartUpload', resource: objectArn(i) }],
  PutObjectTaggingCommand: (i) => [{ action: 's3:PutObjectTagging', resource: objectArn(i) }],
  DeleteObjectCommand: (i) => [{ action: 's3:DeleteObject', resource: objectArn(i) }],
  ListObjectsV2Command: (i) => [{ action: 's3:ListBucket', resource: `arn:aws:s3:::${String(i.Bucket)}` }],
  GetItemCommand: (i) => [{ action: 'dynamodb:GetItem', resource: tableArn(i) }],
  PutItemCommand: (i) => [{ action: 'dynamodb:PutItem', resource: tableArn(i) }],
  UpdateItemCommand: (i) => [{ action: 'dynamodb:UpdateItem', resource: tableArn(i) }],
  DeleteItemCommand: (i) => [{ action: 'dynamodb:DeleteItem', resource: tableArn(i) }],
  ScanCommand: (i) => [{ action: 'dynamodb:Scan', resource: tableArn(i) }],
  QueryCommand: (i) => [{ action: 'dynamodb:Query', resource: tableArn(i) }],
  StartExecutionCommand: (i) => [{ action: 'states:StartExecution', resource: String(i.stateMachineArn) }],
  DescribeExecutionCommand: (i) => [{ action: 'states:DescribeExecution', resource: String(i.executionArn) }],
  StopExecutionCommand: (i) => [{ action: 'states:StopExecution', resource: String(i.executionArn) }],
  GetExecutionHistoryCommand: (i) => [{ action: 'states:GetExecutionHistory', resource: String(i.executionArn) }],
  ListExecutionsCommand: (i) => [{ action: 'states:ListExecutions', resource: String(i.stateMachineArn) }],
  GetSecretValueCommand: (i) => [{ action: 'secretsmanager:GetSecretValue', resource: secretArn(String(i.SecretId)) }],
  DescribeSecretCommand: (i) => [{ action: 'secretsmanager:DescribeSecret', resource: secretArn(String(i.SecretId)) }],
};

/** Whether the role allows `action` on `resource` (identity policies only: the stack sets no others). */
export async function allows(role: StageRole, action: string, resource: string): Promise<boolean> {
  const result = await runSimulation(
    {
      request: { principal: role.principal.replace(/^arn:aws:sts::(\d+):assumed-role\/([^/]+)\/.*$/, 'arn:aws:iam::$1:role/$2'), action, resource: { resource, accountId: LOCAL_ACCOUNT }, contextVariables: {} },
      identityPolicies: role.policies.map((policy, i) => ({ name: `policy-${i}`, policy })),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
    },
    {},
  );
  if (result.resultType === 'error') throw new Error(`local IAM: cannot evaluate ${action} on ${resource}: ${result.errors.message}`);
  return result.overallResult === 'Allowed';
}

/** The message AWS gives a same-account implicit denial. */
const deniedMessage = (role: StageRole, { action, resource }: Authorization) =>
  `User: ${role.principal} is not authorized to perform: ${action} on resource: ${resource} because no identity-based policy allows the ${action} action (stage ${role.stage})`;

const xml = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** A response as the service sends it, for the SDK's deserializer to read. */
function response(statusCode: number, headers: Record<string, string>, body: string) {
  return { statusCode, headers: { 'x-amzn-requestid': 'local-iam', ...headers }, body: Readable.from([Buffer.from(body)]) };
}

function accessDenied(clientName: string, commandName: string, message: string) {
  if (clientName === 'S3Client') {
    // HEAD has no body: the SDK names the error from the status alone, as it does against S3.
    const body = commandName === 'HeadObjectCommand' ? '' : `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>${xml(message)}</Message><RequestId>local-iam</RequestId></Error>`;
    return response(403, { 'content-type': 'application/xml' }, body);
  }
  return response(400, { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-errortype': 'AccessDeniedException' }, JSON.stringify({ __type: 'com.amazon.coral.service#AccessDeniedException', message, Message: message }));
}

/** Whose call this is: set around each stage's core by the local runner and `avatars invoke`. */
const caller = new AsyncLocalStorage<StageRole>();

/** Runs `work` as `role`: every AWS call it makes is checked against the role's policies. */
export function asStage<T>(role: StageRole | undefined, work: () => T): T {
  return role ? caller.run(role, work) : work();
}

const iamCheck: Pluggable<object, object> = {
  applyToStack(stack) {
    stack.add(
      (next, context) => async (args) => {
        const role = caller.getStore();
        if (!role) return next(args);
        const { clientName = '', commandName = '' } = context as { clientName?: string; commandName?: string };
        const authorize = AUTHORIZATIONS[commandName];
        if (!authorize) throw new Error(`local IAM: ${commandName} of ${clientName} has no IAM action here; add it to local/iam.ts`);
        const input = args.input as Input;
        for (const wanted of authorize(input)) {
          if (!(await allows(role, wanted.action, wanted.resource))) return { response: accessDenied(clientName, commandName, deniedMessage(role, wanted)), output: undefined as never };
        }
        const result = await next(args);
        // Without s3:ListBucket, S3 answers a missing key 403 AccessDenied, not 404 NoSuchKey
        // ("Required permissions for Amazon S3 API operations": GetObject, HeadObject).
        const status = (result.response as { statusCode?: number }).statusCode;
        if (clientName === 'S3Client' && status === 404 && /^(Get|Head)ObjectCommand$/.test(commandName) && !(await allows(role, 's3:ListBucket', `arn:aws:s3:::${String(input.Bucket)}`))) {
          ((result.response as { body?: Readable }).body as Readable | undefined)?.resume?.();
          return { ...result, response: accessDenied(clientName, commandName, 'Access Denied') };
        }
        return result;
      },
      // Inside the deserializer, so a denial is parsed into the service's own error class.
      { step: 'deserialize', priority: 'low', name: 'localIamCheck' },
    );
  },
};

let installed = false;

/** Gives every AWS client made from here on the check (each stage's clients are made after this). */
export function installIamCheck(): void {
  if (installed) return;
  installed = true;
  awsClientPlugins.push(iamCheck);
}
