/**
 * The audit trail: every start, every denial and every limit hit, with who, what, when and
 * why. `AuditSink` is the port; today a structured log line through the Logger, later the
 * state store (the "lifecycle" work) can implement the same interface.
 */
import type { Logger } from '../core/ports.ts';
import type { CredentialKind } from './types.ts';

/**
 * Who did it, as verified. Never a credential. `via: 'system'`: the proxy itself (keep-warm,
 * a restart after a health check or a lost backend), on nobody's behalf. `via: 'operator'`:
 * an operator through the admin API (dashboard, CLI); `user` is then `admin:<user>`.
 */
export interface AuditActor {
  readonly user: string | undefined;
  readonly via: CredentialKind | 'unknown' | 'system' | 'operator';
  readonly remoteAddress?: string | undefined;
}

export type AuditEvent =
  | {
      readonly type: 'start';
      readonly at: number;
      readonly actor: AuditActor | undefined;
      readonly resource: string;
      readonly instance: string;
      /** The groups the request acted with (what the instance is started for). */
      readonly groups: readonly string[];
    }
  | {
      readonly type: 'denied';
      readonly at: number;
      readonly actor: AuditActor;
      readonly resource: string;
      /** SP_ACCESS_UNAUTHENTICATED, SP_ACCESS_DENIED, or SP_ROUTE_NOT_FOUND for a hidden resource. */
      readonly code: string;
      readonly reason: string;
      readonly method: string;
      /** The groups named in the URL (`-` for the placeholder). */
      readonly urlGroups: string;
      readonly heldGroups: readonly string[];
      /** False when the resource id is not configured at all. */
      readonly known: boolean;
    }
  | {
      /** A provider reported an endpoint the backendEndpoints policy refuses. */
      readonly type: 'endpoint-refused';
      readonly at: number;
      readonly actor: undefined;
      readonly resource: string;
      readonly instance: string;
      readonly endpoint: string;
      readonly reason: string;
    }
  | {
      readonly type: 'limit';
      readonly at: number;
      readonly actor: AuditActor | undefined;
      readonly resource: string;
      readonly instance: string;
      /** e.g. `concurrentStarts.perUser`. */
      readonly limit: string;
      readonly max: number;
      readonly current: number;
    };

export interface AuditSink {
  /** Must not throw and must not block on I/O (it is called on the request path). */
  record(event: AuditEvent): void;
}

/** Writes audit events as structured log lines (`audit: <type>`). */
export class LoggerAuditSink implements AuditSink {
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  record(event: AuditEvent): void {
    const { type, at, ...rest } = event;
    const line = { audit: type, at: new Date(at).toISOString(), ...rest };
    if (type === 'start') this.#log.info(line, 'audit: start');
    else this.#log.warn(line, `audit: ${type}`);
  }
}

/** Keeps events in memory (tests, and a short history for an admin view). */
export class MemoryAuditSink implements AuditSink {
  readonly events: AuditEvent[] = [];
  readonly #max: number;

  constructor(max = 10_000) {
    this.#max = max;
  }

  record(event: AuditEvent): void {
    if (this.events.length >= this.#max) this.events.shift();
    this.events.push(event);
  }
}

/** Sends each event to every sink. */
export function teeAudit(...sinks: AuditSink[]): AuditSink {
  return { record: (e) => { for (const s of sinks) s.record(e); } };
}
