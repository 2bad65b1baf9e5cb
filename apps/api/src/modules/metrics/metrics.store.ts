import type { controlv1 } from '@hangar/proto';
import { Inject, Injectable, Optional } from '@nestjs/common';
import { RedisService } from '../../infra/redis/redis.service.js';

/** One VM's sample as the api keeps it (JSON-safe; counters are cumulative since the VM started). */
export interface VmMetricsSample {
  readonly vmId: string;
  readonly hostId: string;
  /** ISO 8601. */
  readonly sampledAt: string;
  readonly cpuSecondsTotal: number;
  /** Per vCPU thread, in vCPU index order. */
  readonly vcpuSeconds: readonly number[];
  readonly rssBytes: number;
  readonly block: readonly {
    readonly device: string;
    readonly rdBytes: number;
    readonly wrBytes: number;
    readonly rdOps: number;
    readonly wrOps: number;
  }[];
  readonly nics: readonly {
    readonly name: string;
    readonly ifname: string;
    readonly rxBytes: number;
    readonly txBytes: number;
    readonly rxPackets: number;
    readonly txPackets: number;
  }[];
}

/** One host's sample (CPU seconds are cumulative since the host booted). */
export interface HostMetricsSample {
  readonly hostId: string;
  readonly sampledAt: string;
  readonly cpuCount: number;
  readonly cpuSeconds: {
    readonly user: number;
    readonly system: number;
    readonly idle: number;
    readonly iowait: number;
    readonly steal: number;
  };
  readonly memoryTotalBytes: number;
  readonly memoryAvailableBytes: number;
  readonly load1: number;
  readonly load5: number;
  readonly load15: number;
  readonly pools: readonly {
    readonly name: string;
    readonly totalBytes: number;
    readonly freeBytes: number;
  }[];
}

/** The latest sample and the one before it (for rates). */
export interface StoredSamples<T> {
  readonly latest: T;
  readonly previous: T | undefined;
}

/** Nest injection token for {@link MetricsStoreOptions}. */
export const METRICS_STORE_OPTIONS = Symbol('METRICS_STORE_OPTIONS');

/** How long samples are kept. */
export interface MetricsStoreOptions {
  /** How long a sample outlives its arrival without a newer one (default 10 min). */
  readonly ttlMs?: number;
}

/**
 * Writes a sample only when it is newer than the stored one, keeping the replaced one as
 * `prev`: re-sent batches (at-least-once delivery) and batches arriving out of order never move
 * the latest sample backwards, and two samples give a rate.
 */
const SET_IF_NEWER = `
local at = tonumber(ARGV[1])
local current = redis.call('HGET', KEYS[1], 'at')
if current and tonumber(current) >= at then return 0 end
local data = redis.call('HGET', KEYS[1], 'data')
if current and data then redis.call('HSET', KEYS[1], 'prevAt', current, 'prev', data) end
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1`;

/**
 * The latest metrics of every VM and host, in Redis under the deployment's prefix
 * (`<prefix>:metrics:vm:<id>`, `<prefix>:metrics:host:<id>`), each with a TTL: the api keeps
 * recent samples only (ARCHITECTURE.md "Metrics"); history belongs to Prometheus.
 */
@Injectable()
export class MetricsStore {
  readonly ttlMs: number;

  constructor(
    private readonly redis: RedisService,
    @Optional() @Inject(METRICS_STORE_OPTIONS) options?: MetricsStoreOptions,
  ) {
    this.ttlMs = Math.max(1_000, options?.ttlMs ?? 600_000);
  }

  vmKey(vmId: string): string {
    return this.redis.key('metrics', 'vm', vmId);
  }

  hostKey(hostId: string): string {
    return this.redis.key('metrics', 'host', hostId);
  }

  /**
   * Stores one batch of a host: its own sample and those of `vmIds` (the VMs the api knows on
   * that host; samples of other VMs are dropped). Returns how many samples were newer.
   */
  async storeBatch(
    hostId: string,
    batch: controlv1.MetricsBatch,
    vmIds: ReadonlySet<string>,
  ): Promise<{ host: boolean; vms: number }> {
    const pipeline = this.redis.client.pipeline();
    let hostQueued = false;
    if (batch.host?.sampledAt) {
      const sample = toHostSample(hostId, batch.host);
      pipeline.eval(
        SET_IF_NEWER,
        1,
        this.hostKey(hostId),
        Date.parse(sample.sampledAt),
        JSON.stringify(sample),
        this.ttlMs,
      );
      hostQueued = true;
    }
    for (const vm of batch.vms) {
      if (!vmIds.has(vm.vmId) || !vm.sampledAt) continue;
      const sample = toVmSample(hostId, vm);
      pipeline.eval(
        SET_IF_NEWER,
        1,
        this.vmKey(vm.vmId),
        Date.parse(sample.sampledAt),
        JSON.stringify(sample),
        this.ttlMs,
      );
    }
    const results = (await pipeline.exec()) ?? [];
    for (const [error] of results) if (error) throw error;
    const written = results.map(([, value]) => value === 1);
    return {
      host: hostQueued ? (written[0] ?? false) : false,
      vms: written.slice(hostQueued ? 1 : 0).filter(Boolean).length,
    };
  }

  async vm(vmId: string): Promise<StoredSamples<VmMetricsSample> | undefined> {
    return (await this.vms([vmId])).get(vmId);
  }

  async host(hostId: string): Promise<StoredSamples<HostMetricsSample> | undefined> {
    return (await this.hosts([hostId])).get(hostId);
  }

  /** The latest samples of many VMs at once (one pipeline). */
  vms(vmIds: readonly string[]): Promise<Map<string, StoredSamples<VmMetricsSample>>> {
    return this.read(vmIds, (id) => this.vmKey(id));
  }

  /** The latest samples of many hosts at once. */
  hosts(hostIds: readonly string[]): Promise<Map<string, StoredSamples<HostMetricsSample>>> {
    return this.read(hostIds, (id) => this.hostKey(id));
  }

  private async read<T>(
    ids: readonly string[],
    keyOf: (id: string) => string,
  ): Promise<Map<string, StoredSamples<T>>> {
    const out = new Map<string, StoredSamples<T>>();
    if (ids.length === 0) return out;
    const pipeline = this.redis.client.pipeline();
    for (const id of ids) pipeline.hmget(keyOf(id), 'data', 'prev');
    const results = (await pipeline.exec()) ?? [];
    results.forEach(([error, value], index) => {
      const id = ids[index];
      if (error || id === undefined || !Array.isArray(value)) return;
      const [data, prev] = value as [string | null, string | null];
      if (!data) return;
      out.set(id, { latest: JSON.parse(data) as T, previous: prev ? (JSON.parse(prev) as T) : undefined });
    });
    return out;
  }
}

function toVmSample(hostId: string, vm: controlv1.VmSample): VmMetricsSample {
  return {
    vmId: vm.vmId,
    hostId,
    sampledAt: (vm.sampledAt ?? new Date()).toISOString(),
    cpuSecondsTotal: vm.cpuSecondsTotal,
    vcpuSeconds: [...vm.vcpuSeconds],
    rssBytes: vm.rssBytes,
    block: vm.block.map((b) => ({
      device: b.device,
      rdBytes: b.rdBytes,
      wrBytes: b.wrBytes,
      rdOps: b.rdOps,
      wrOps: b.wrOps,
    })),
    nics: vm.nics.map((n) => ({
      name: n.name,
      ifname: n.ifname,
      rxBytes: n.rxBytes,
      txBytes: n.txBytes,
      rxPackets: n.rxPackets,
      txPackets: n.txPackets,
    })),
  };
}

function toHostSample(hostId: string, host: controlv1.HostSample): HostMetricsSample {
  const cpu = host.cpuSeconds;
  return {
    hostId,
    sampledAt: (host.sampledAt ?? new Date()).toISOString(),
    cpuCount: host.cpuCount,
    cpuSeconds: {
      user: cpu?.user ?? 0,
      system: cpu?.system ?? 0,
      idle: cpu?.idle ?? 0,
      iowait: cpu?.iowait ?? 0,
      steal: cpu?.steal ?? 0,
    },
    memoryTotalBytes: host.memoryTotalBytes,
    memoryAvailableBytes: host.memoryAvailableBytes,
    load1: host.load1,
    load5: host.load5,
    load15: host.load15,
    pools: host.pools.map((p) => ({ name: p.name, totalBytes: p.totalBytes, freeBytes: p.freeBytes })),
  };
}
