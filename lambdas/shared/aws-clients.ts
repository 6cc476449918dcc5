import type { Pluggable } from '@smithy/types';

type AnyPlugin = Pluggable<object, object>;

/**
 * Middleware that every AWS client a stage makes carries besides the SDK's own: none when
 * deployed; locally, the IAM check of each stage's synthesized role (local/iam.ts).
 */
export const awsClientPlugins: AnyPlugin[] = [];

/** What else wraps each client: deployed, X-Ray's capture (stage.ts), so every AWS call is a subsegment. */
export const awsClientWrappers: ((client: never) => unknown)[] = [];

export function withClientPlugins<C extends { middlewareStack: { use(plugin: never): void } }>(client: C): C {
  for (const plugin of awsClientPlugins) client.middlewareStack.use(plugin as never);
  for (const wrap of awsClientWrappers) wrap(client as never);
  return client;
}
