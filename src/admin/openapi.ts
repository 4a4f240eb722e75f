/**
 * The OpenAPI 3.1 document of the admin API, built from the zod schemas the code validates
 * with (schemas.ts). Served at `/api/v1/openapi.json` and written to
 * docs/reference/admin-api.json by `npm run docs:reference`; a test keeps the file in step.
 */
import { z } from 'zod';
import {
  actionResultSchema, adminRegistry, auditPageSchema, auditQuerySchema, drainBodySchema, healthSchema, instanceListSchema,
  instanceQuerySchema, logsSchema, reloadResultSchema, resourceListSchema, resourceViewSchema, startBodySchema, stopRetryListSchema,
} from './schemas.ts';

type Json = Record<string, unknown>;

const ref = (schema: z.ZodType): Json => {
  const id = adminRegistry.get(schema)?.id;
  if (id === undefined) throw new Error('schema is not registered');
  return { $ref: `#/components/schemas/${id}` };
};

const json = (schema: z.ZodType, description: string): Json => ({ description, content: { 'application/json': { schema: ref(schema) } } });
const problem = (description: string): Json => ({ description, content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } } });

const errors: Json = {
  400: problem('Malformed request (SP_ADMIN_BAD_REQUEST).'),
  401: problem('No verified identity (SP_ACCESS_UNAUTHENTICATED).'),
  403: problem('Not an admin (SP_ACCESS_DENIED), or a browser action without the CSRF token (SP_ADMIN_CSRF).'),
};

function queryParams(schema: z.ZodObject): Json[] {
  return Object.entries(schema.shape).map(([name, field]) => {
    const s = z.toJSONSchema(field as z.ZodType, { target: 'draft-2020-12', io: 'input', unrepresentable: 'any' }) as Json;
    const { $schema: _drop, description, ...rest } = s;
    return { name, in: 'query', required: false, ...(description === undefined ? {} : { description }), schema: rest };
  });
}

const resourceParam = { name: 'resource', in: 'path', required: true, schema: { type: 'string' }, description: 'The resource id.' };
const keyParam = { name: 'instanceKey', in: 'path', required: true, schema: { type: 'string' }, description: 'The instance key, percent-encoded (`*` is `%2A` or `*`).' };

function instanceAction(summary: string, body?: z.ZodType, more: Json = {}): Json {
  return {
    post: {
      summary, parameters: [resourceParam, keyParam],
      ...(body === undefined ? {} : { requestBody: { required: false, content: { 'application/json': { schema: ref(body) } } } }),
      responses: {
        202: json(actionResultSchema, 'Accepted; follow the instance on /api/v1/events or its own events stream.'),
        ...errors, 404: problem('Unknown resource or instance.'), 501: problem('The provider cannot do this (SP_ADMIN_UNSUPPORTED).'), ...more,
      },
    },
  };
}

const stopRetryConflict = { 409: problem('No stop is owed for the instance, or a try is in flight (SP_ADMIN_CONFLICT).') };

export function adminOpenApi(): Json {
  const { schemas } = z.toJSONSchema(adminRegistry, { target: 'draft-2020-12', io: 'output', uri: (id) => `#/components/schemas/${id}` }) as { schemas: Record<string, Json> };
  for (const s of Object.values(schemas)) {
    delete s.$schema;
    delete s.$id;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Smart Proxy admin API',
      version: '1',
      description: 'On the admin listener (loopback by default). Every call needs an admin identity (docs/operations/admin-api.md). Errors are RFC 9457 problem details.',
    },
    paths: {
      '/healthz': { get: { summary: 'Liveness: the process answers.', security: [], responses: { 200: json(healthSchema, 'Alive.') } } },
      '/readyz': {
        get: {
          summary: 'Readiness: false while draining or while the state store is unreachable.', security: [],
          responses: { 200: json(healthSchema, 'Ready.'), 503: json(healthSchema, 'Not ready.') },
        },
      },
      '/metrics': { get: { summary: 'Prometheus metrics (text exposition format).', responses: { 200: { description: 'Metrics.', content: { 'text/plain': { schema: { type: 'string' } } } }, 503: { description: 'Metrics are not available in this build.' } } } },
      '/api/v1/openapi.json': { get: { summary: 'This document.', responses: { 200: { description: 'OpenAPI 3.1.', content: { 'application/json': { schema: { type: 'object' } } } } } } },
      '/api/v1/resources': { get: { summary: 'Every resource with its instances, boot history and estimate.', responses: { 200: json(resourceListSchema, 'Resources.'), ...errors } } },
      '/api/v1/resources/{resource}': {
        get: { summary: 'One resource.', parameters: [resourceParam], responses: { 200: json(resourceViewSchema, 'The resource.'), ...errors, 404: problem('Unknown resource.') } },
      },
      '/api/v1/resources/{resource}/start': {
        post: {
          summary: 'Start an instance of a resource (its key chooses which; default `*`).', parameters: [resourceParam],
          requestBody: { required: false, content: { 'application/json': { schema: ref(startBodySchema) } } },
          responses: { 202: json(actionResultSchema, 'Start accepted (or already starting/ready).'), ...errors, 404: problem('Unknown resource.'), 429: problem('A start limit was reached.'), 503: problem('Cooling down after a failed start, or shutting down.') },
        },
      },
      '/api/v1/instances': { get: { summary: 'Instances of every resource, filtered and paged.', parameters: queryParams(instanceQuerySchema), responses: { 200: json(instanceListSchema, 'A page of instances.'), ...errors } } },
      '/api/v1/resources/{resource}/instances/{instanceKey}/stop': instanceAction('Stop an instance now (held requests wait for a new start).'),
      '/api/v1/resources/{resource}/instances/{instanceKey}/drain': instanceAction('Stop an instance once it has no open connection and no held request (or after timeoutMs). New requests are still served meanwhile.', drainBodySchema),
      '/api/v1/resources/{resource}/instances/{instanceKey}/suspend': instanceAction('Suspend an instance, where the provider can.'),
      '/api/v1/resources/{resource}/instances/{instanceKey}/resume': instanceAction('Resume a suspended instance, where the provider can.'),
      '/api/v1/resources/{resource}/instances/{instanceKey}/retry-stop': instanceAction('Try a stop owed for the instance now (see /api/v1/stop-retries): a scheduled one at once, a given-up one afresh (a new series of tries). Audited `admin-retry-stop`. 501 with replicas for a given-up stop.', undefined, stopRetryConflict),
      '/api/v1/resources/{resource}/instances/{instanceKey}/abandon-stop': instanceAction('Let a stop owed for the instance go (the operator takes care of the machine): no more tries, no longer shown. Audited `admin-abandon-stop`.', undefined, stopRetryConflict),
      '/api/v1/resources/{resource}/instances/{instanceKey}/logs': {
        get: { summary: 'The output the provider keeps of the instance.', parameters: [resourceParam, keyParam], responses: { 200: json(logsSchema, 'The output.'), ...errors, 404: problem('Unknown instance, or no output kept.'), 501: problem('The provider keeps no output.') } },
      },
      '/api/v1/resources/{resource}/instances/{instanceKey}/events': {
        get: {
          summary: 'The instance\'s progress as Server-Sent Events: the same `progress`, `ready` and `failed` events as the waiting page\'s stream.',
          parameters: [resourceParam, keyParam], responses: { 200: { description: 'text/event-stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errors, 404: problem('Unknown resource.') },
        },
      },
      '/api/v1/events': {
        get: {
          summary: 'Every change as Server-Sent Events: `instance` (an Instance) and `audit` (an audit event without id).',
          responses: { 200: { description: 'text/event-stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errors, 503: problem('Too many open streams.') },
        },
      },
      '/api/v1/stop-retries': { get: { summary: 'Stops owed for instances out of service (a failed start\'s clean-up, a stop that failed), tried again with backoff, and those whose tries ran out: each may be a machine still running.', responses: { 200: json(stopRetryListSchema, 'Owed stops.'), ...errors } } },
      '/api/v1/audit': { get: { summary: 'The audit log from the state store, newest first, filtered and paged.', parameters: queryParams(auditQuerySchema), responses: { 200: json(auditPageSchema, 'A page of events.'), ...errors, 503: problem('The state store is unreachable.') } } },
      '/api/v1/config': { get: { summary: 'The effective configuration (defaults applied) with secrets redacted.', responses: { 200: { description: 'The configuration.', content: { 'application/json': { schema: { type: 'object' } } } }, ...errors } } },
      '/api/v1/reload': { post: { summary: 'Re-read and apply the configuration file; a bad one is refused and the old one kept.', responses: { 200: json(reloadResultSchema, 'Applied.'), ...errors, 501: problem('Reload is not available in this build.') } } },
    },
    components: {
      schemas,
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'A token or JWT identity holding an admin group.' },
        basic: { type: 'http', scheme: 'basic', description: 'A basic identity holding an admin group.' },
      },
    },
    security: [{ bearer: [] }, { basic: [] }],
  };
}

/** The document as written to docs/reference/admin-api.json. */
export function adminOpenApiText(): string {
  return `${JSON.stringify(adminOpenApi(), null, 2)}\n`;
}
