import { readFileSync } from 'node:fs';
import {
  type CallOptions,
  type ChannelCredentials,
  type ClientUnaryCall,
  credentials,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import { agentv1 } from '@hangar/proto';
import { Inject, Injectable, type OnApplicationShutdown, Optional } from '@nestjs/common';
import { AgentCallError } from './agent-call.error.js';

/** Nest injection token for {@link AgentClientOptions}. */
export const AGENT_CLIENT_OPTIONS = Symbol('AGENT_CLIENT_OPTIONS');

/** PEM files of the control plane's client certificate for mTLS to agents. */
export interface AgentClientTlsFiles {
  /** The cluster CA every agent certificate chains to. */
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

/** How the pool reaches agents. */
export interface AgentClientOptions {
  /** mTLS to every agent; plaintext without it (only sensible on loopback, for development). */
  readonly tls?: AgentClientTlsFiles;
  /** Per-call deadlines in ms, overriding {@link DEFAULT_AGENT_DEADLINES_MS}. */
  readonly deadlinesMs?: Partial<Record<AgentMethod, number>>;
}

/** The HostAgent RPCs the control plane calls through the pool. */
export type AgentMethod =
  | 'createVm'
  | 'startVm'
  | 'stopVm'
  | 'rebootVm'
  | 'pauseVm'
  | 'resumeVm'
  | 'deleteVm'
  | 'getVm'
  | 'listVms'
  | 'consoleLog';

/**
 * Deadlines per call. A graceful stop waits for the guest's ACPI powerdown (the agent's own
 * timeout, then quit/kill), so it gets the longest; reads are short.
 */
export const DEFAULT_AGENT_DEADLINES_MS: Readonly<Record<AgentMethod, number>> = {
  createVm: 120_000,
  startVm: 60_000,
  stopVm: 120_000,
  rebootVm: 60_000,
  pauseVm: 30_000,
  resumeVm: 30_000,
  deleteVm: 60_000,
  getVm: 10_000,
  listVms: 15_000,
  consoleLog: 10_000,
};

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** Options of one call. */
export interface AgentCallOptions {
  /** Overrides the method's deadline. */
  readonly timeoutMs?: number;
}

/**
 * One `agentv1.HostAgentClient` per agent address, reused across calls (grpc-js multiplexes
 * calls over one HTTP/2 connection and reconnects by itself). Every call has a deadline and
 * fails with an {@link AgentCallError} that says whether a retry may help.
 */
@Injectable()
export class AgentClientPool implements OnApplicationShutdown {
  private readonly clients = new Map<string, agentv1.HostAgentClient>();
  private readonly channelCredentials: ChannelCredentials;
  private readonly deadlines: Readonly<Record<AgentMethod, number>>;

  constructor(@Optional() @Inject(AGENT_CLIENT_OPTIONS) options?: AgentClientOptions) {
    this.channelCredentials = options?.tls
      ? credentials.createSsl(
          readFileSync(options.tls.ca),
          readFileSync(options.tls.key),
          readFileSync(options.tls.cert),
        )
      : credentials.createInsecure();
    this.deadlines = { ...DEFAULT_AGENT_DEADLINES_MS, ...options?.deadlinesMs };
  }

  /** The client for `address` (host:port), created on first use. */
  client(address: string): agentv1.HostAgentClient {
    let client = this.clients.get(address);
    if (!client) {
      client = new agentv1.HostAgentClient(address, this.channelCredentials, {
        // Fail fast while an agent is down instead of waiting out grpc-js's long reconnect backoff.
        'grpc.initial_reconnect_backoff_ms': 250,
        'grpc.max_reconnect_backoff_ms': 5_000,
        'grpc.keepalive_time_ms': 30_000,
        'grpc.keepalive_timeout_ms': 10_000,
      });
      this.clients.set(address, client);
    }
    return client;
  }

  createVm(address: string, request: agentv1.CreateVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.CreateVmRequest, agentv1.CreateVmResponse>(
      address,
      'createVm',
      request,
      options,
    );
  }

  startVm(address: string, request: agentv1.StartVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.StartVmRequest, agentv1.StartVmResponse>(address, 'startVm', request, options);
  }

  stopVm(address: string, request: agentv1.StopVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.StopVmRequest, agentv1.StopVmResponse>(address, 'stopVm', request, options);
  }

  rebootVm(address: string, request: agentv1.RebootVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.RebootVmRequest, agentv1.RebootVmResponse>(
      address,
      'rebootVm',
      request,
      options,
    );
  }

  pauseVm(address: string, request: agentv1.PauseVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.PauseVmRequest, agentv1.PauseVmResponse>(address, 'pauseVm', request, options);
  }

  resumeVm(address: string, request: agentv1.ResumeVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.ResumeVmRequest, agentv1.ResumeVmResponse>(
      address,
      'resumeVm',
      request,
      options,
    );
  }

  deleteVm(address: string, request: agentv1.DeleteVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.DeleteVmRequest, agentv1.DeleteVmResponse>(
      address,
      'deleteVm',
      request,
      options,
    );
  }

  getVm(address: string, request: agentv1.GetVmRequest, options?: AgentCallOptions) {
    return this.call<agentv1.GetVmRequest, agentv1.GetVmResponse>(address, 'getVm', request, options);
  }

  listVms(address: string, options?: AgentCallOptions) {
    return this.call<agentv1.ListVmsRequest, agentv1.ListVmsResponse>(address, 'listVms', {}, options);
  }

  consoleLog(address: string, request: agentv1.ConsoleLogRequest, options?: AgentCallOptions) {
    return this.call<agentv1.ConsoleLogRequest, agentv1.ConsoleLogResponse>(
      address,
      'consoleLog',
      request,
      options,
    );
  }

  /** Closes every client (their connections). */
  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }

  onApplicationShutdown(): void {
    this.close();
  }

  private call<Req, Res>(
    address: string,
    method: AgentMethod,
    request: Req,
    options: AgentCallOptions = {},
  ): Promise<Res> {
    const client = this.client(address);
    const fn = client[method] as unknown as UnaryMethod<Req, Res>;
    const timeoutMs = options.timeoutMs ?? this.deadlines[method];
    return new Promise<Res>((resolve, reject) => {
      fn.call(client, request, new Metadata(), { deadline: Date.now() + timeoutMs }, (error, response) => {
        if (error) reject(new AgentCallError(method, address, error));
        else resolve(response);
      });
    });
  }
}
