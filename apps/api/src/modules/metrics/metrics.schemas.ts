import { z } from 'zod';
import { TimestampSchema, UuidSchema } from '../../common/http/schemas.js';
import type { HostMetrics, VmMetrics } from './metrics.service.js';

/** The latest sample of a VM, as its agent reported it (counters are cumulative). */
export const VmMetricsSchema = z
  .strictObject({
    vm_id: UuidSchema,
    host_id: UuidSchema.nullable(),
    sampled_at: TimestampSchema.nullable().describe('Null until the agent reported a sample'),
    cpu: z
      .strictObject({
        seconds_total: z.number().min(0).describe('vCPU time used, summed over the vCPUs'),
        vcpu_seconds: z.array(z.number().min(0)).describe('Per vCPU, in vCPU index order'),
        usage: z.number().min(0).nullable().describe('vCPUs busy on average between the last two samples'),
      })
      .nullable(),
    memory: z.strictObject({ rss_bytes: z.int().min(0) }).nullable(),
    block: z.array(
      z.strictObject({
        device: z.string(),
        read_bytes: z.int().min(0),
        write_bytes: z.int().min(0),
        read_requests: z.int().min(0),
        write_requests: z.int().min(0),
      }),
    ),
    nics: z.array(
      z.strictObject({
        name: z.string(),
        ifname: z.string(),
        rx_bytes: z.int().min(0),
        tx_bytes: z.int().min(0),
        rx_packets: z.int().min(0),
        tx_packets: z.int().min(0),
      }),
    ),
  })
  .meta({ id: 'VmMetrics' });
export type VmMetricsDto = z.infer<typeof VmMetricsSchema>;

/** The latest sample of a host. */
export const HostMetricsSchema = z
  .strictObject({
    host_id: UuidSchema,
    sampled_at: TimestampSchema.nullable(),
    cpu: z
      .strictObject({
        count: z.int().min(0),
        seconds: z.strictObject({
          user: z.number(),
          system: z.number(),
          idle: z.number(),
          iowait: z.number(),
          steal: z.number(),
        }),
        busy: z
          .number()
          .min(0)
          .max(1)
          .nullable()
          .describe('Busy share of all CPUs between the last two samples'),
      })
      .nullable(),
    memory: z.strictObject({ total_bytes: z.int().min(0), available_bytes: z.int().min(0) }).nullable(),
    load: z.strictObject({ load1: z.number(), load5: z.number(), load15: z.number() }).nullable(),
    pools: z.array(
      z.strictObject({ name: z.string(), total_bytes: z.int().min(0), free_bytes: z.int().min(0) }),
    ),
  })
  .meta({ id: 'HostMetrics' });
export type HostMetricsDto = z.infer<typeof HostMetricsSchema>;

/** The REST representation of a VM's latest metrics. */
export function toVmMetricsDto(metrics: VmMetrics): VmMetricsDto {
  const s = metrics.sample;
  return {
    vm_id: metrics.vmId,
    host_id: metrics.hostId,
    sampled_at: s?.sampledAt ?? null,
    cpu: s
      ? { seconds_total: s.cpuSecondsTotal, vcpu_seconds: [...s.vcpuSeconds], usage: metrics.cpuUsage }
      : null,
    memory: s ? { rss_bytes: s.rssBytes } : null,
    block: (s?.block ?? []).map((b) => ({
      device: b.device,
      read_bytes: b.rdBytes,
      write_bytes: b.wrBytes,
      read_requests: b.rdOps,
      write_requests: b.wrOps,
    })),
    nics: (s?.nics ?? []).map((n) => ({
      name: n.name,
      ifname: n.ifname,
      rx_bytes: n.rxBytes,
      tx_bytes: n.txBytes,
      rx_packets: n.rxPackets,
      tx_packets: n.txPackets,
    })),
  };
}

/** The REST representation of a host's latest metrics. */
export function toHostMetricsDto(metrics: HostMetrics): HostMetricsDto {
  const s = metrics.sample;
  return {
    host_id: metrics.hostId,
    sampled_at: s?.sampledAt ?? null,
    cpu: s ? { count: s.cpuCount, seconds: { ...s.cpuSeconds }, busy: metrics.cpuBusy } : null,
    memory: s ? { total_bytes: s.memoryTotalBytes, available_bytes: s.memoryAvailableBytes } : null,
    load: s ? { load1: s.load1, load5: s.load5, load15: s.load15 } : null,
    pools: (s?.pools ?? []).map((p) => ({
      name: p.name,
      total_bytes: p.totalBytes,
      free_bytes: p.freeBytes,
    })),
  };
}
