import { VM_STATES } from '@hangar/vmm-core';
import { Injectable } from '@nestjs/common';
import { DomainError } from '../../errors/domain-error.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { type VmScope, VmsService } from '../vms/vms.service.js';
import {
  type HostMetricsSample,
  MetricsStore,
  type StoredSamples,
  type VmMetricsSample,
} from './metrics.store.js';
import { type PrometheusFamily, type PrometheusSample, renderPrometheus } from './prometheus.js';

/** A VM's latest metrics with rates derived from the sample before it. */
export interface VmMetrics {
  readonly vmId: string;
  readonly hostId: string | null;
  /** Null until the VM's agent reported a sample (or after it went stale and expired). */
  readonly sample: VmMetricsSample | null;
  /** vCPU seconds per wall second between the last two samples (1.0 = one vCPU busy); null with one sample. */
  readonly cpuUsage: number | null;
}

/** A host's latest metrics with its CPU busy share between the last two samples. */
export interface HostMetrics {
  readonly hostId: string;
  readonly sample: HostMetricsSample | null;
  /** Busy share of all host CPUs (0..1) between the last two samples; null with one sample. */
  readonly cpuBusy: number | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Reads of the metrics the agents report: per VM and per host for the REST api, and the whole
 * cluster in the Prometheus text format with `hangar_` names in the style of the libvirt exporter.
 */
@Injectable()
export class MetricsService {
  constructor(
    private readonly prisma: PrismaService,
    private readonly store: MetricsStore,
    private readonly vms: VmsService,
  ) {}

  /** `GET /v1/vms/{id}/metrics` (VM_NOT_FOUND for another project's VM). */
  async vmMetrics(vmId: string, scope: VmScope = {}): Promise<VmMetrics> {
    const vm = await this.vms.get(vmId, scope);
    const stored = await this.store.vm(vm.id);
    // A sample from the VM's previous host (before a migration) or an earlier life is not its current state.
    const current = stored && stored.latest.hostId === vm.hostId ? stored : undefined;
    return {
      vmId: vm.id,
      hostId: vm.hostId,
      sample: current?.latest ?? null,
      cpuUsage: current ? vmCpuUsage(current) : null,
    };
  }

  /** `GET /v1/hosts/{id}/metrics`. */
  async hostMetrics(hostId: string): Promise<HostMetrics> {
    const host = UUID.test(hostId)
      ? await this.prisma.host.findUnique({ where: { id: hostId }, select: { id: true } })
      : null;
    if (!host) throw DomainError.notFound('HOST_NOT_FOUND', 'host', hostId);
    const stored = await this.store.host(host.id);
    return { hostId: host.id, sample: stored?.latest ?? null, cpuBusy: stored ? hostCpuBusy(stored) : null };
  }

  /** The Prometheus text of every host and live VM (the `/metrics` scrape). */
  async prometheusText(): Promise<string> {
    return renderPrometheus(await this.prometheusFamilies());
  }

  /** The metric families behind {@link prometheusText}. */
  async prometheusFamilies(): Promise<PrometheusFamily[]> {
    const [hosts, vms] = await Promise.all([
      this.prisma.host.findMany({
        select: {
          id: true,
          name: true,
          state: true,
          cordoned: true,
          cores: true,
          memoryMib: true,
          usedVcpus: true,
          usedMemoryMib: true,
          cpuAllocationRatio: true,
          ramAllocationRatio: true,
        },
        orderBy: { name: 'asc' },
      }),
      this.prisma.vm.findMany({
        where: { deletedAt: null },
        select: {
          id: true,
          name: true,
          hostId: true,
          observedState: true,
          project: { select: { name: true } },
        },
        orderBy: { createdAt: 'asc' },
      }),
    ]);
    const hostName = new Map(hosts.map((h) => [h.id, h.name]));
    const [hostSamples, vmSamples] = await Promise.all([
      this.store.hosts(hosts.map((h) => h.id)),
      this.store.vms(vms.filter((v) => v.hostId !== null).map((v) => v.id)),
    ]);

    const f = new Families();
    for (const h of hosts) {
      const host = { host: h.name };
      f.gauge(
        'hangar_host_up',
        'Whether the host is UP (its agent heartbeats).',
        host,
        h.state === 'UP' ? 1 : 0,
      );
      f.gauge('hangar_host_cordoned', 'Whether the host is cordoned (no new VMs).', host, h.cordoned ? 1 : 0);
      f.gauge('hangar_host_cores', 'Physical cores of the host.', host, h.cores);
      f.gauge(
        'hangar_host_vcpus_capacity',
        'Schedulable vCPUs (cores times the CPU allocation ratio).',
        host,
        Math.floor(h.cores * h.cpuAllocationRatio),
      );
      f.gauge('hangar_host_vcpus_allocated', 'vCPUs claimed by VMs on the host.', host, h.usedVcpus);
      f.gauge(
        'hangar_host_memory_capacity_bytes',
        'Schedulable memory (RAM times the RAM allocation ratio).',
        host,
        Math.floor(h.memoryMib * h.ramAllocationRatio) * MIB,
      );
      f.gauge(
        'hangar_host_memory_allocated_bytes',
        'Memory claimed by VMs on the host.',
        host,
        h.usedMemoryMib * MIB,
      );
      const s = hostSamples.get(h.id)?.latest;
      if (!s) continue;
      for (const [mode, seconds] of Object.entries(s.cpuSeconds)) {
        f.counter(
          'hangar_host_cpu_seconds_total',
          'CPU time of the host by mode, summed over its CPUs.',
          { ...host, mode },
          seconds,
        );
      }
      f.gauge('hangar_host_cpus', 'Online CPUs of the host.', host, s.cpuCount);
      f.gauge('hangar_host_memory_total_bytes', 'Memory of the host.', host, s.memoryTotalBytes);
      f.gauge(
        'hangar_host_memory_available_bytes',
        'Memory available for new allocations on the host.',
        host,
        s.memoryAvailableBytes,
      );
      f.gauge('hangar_host_load1', 'Load average over 1 minute.', host, s.load1);
      f.gauge('hangar_host_load5', 'Load average over 5 minutes.', host, s.load5);
      f.gauge('hangar_host_load15', 'Load average over 15 minutes.', host, s.load15);
      for (const p of s.pools) {
        f.gauge(
          'hangar_host_pool_size_bytes',
          'Size of a storage pool of the host.',
          { ...host, pool: p.name },
          p.totalBytes,
        );
        f.gauge(
          'hangar_host_pool_free_bytes',
          'Free space of a storage pool of the host.',
          { ...host, pool: p.name },
          p.freeBytes,
        );
      }
    }

    const perState = new Map<string, number>(VM_STATES.map((s) => [s, 0]));
    for (const v of vms) {
      perState.set(v.observedState, (perState.get(v.observedState) ?? 0) + 1);
      const base = {
        vm: v.id,
        name: v.name,
        host: v.hostId ? (hostName.get(v.hostId) ?? v.hostId) : '',
        project: v.project.name,
      };
      f.gauge(
        'hangar_vm_info',
        'A live VM and its observed state (always 1).',
        { ...base, state: v.observedState },
        1,
      );
      const s = vmSamples.get(v.id)?.latest;
      if (!s || s.hostId !== v.hostId) continue;
      f.counter(
        'hangar_vm_cpu_seconds_total',
        'vCPU time used by the VM, summed over its vCPUs.',
        base,
        s.cpuSecondsTotal,
      );
      s.vcpuSeconds.forEach((seconds, index) => {
        f.counter(
          'hangar_vm_vcpu_seconds_total',
          'Time used by one vCPU of the VM.',
          { ...base, vcpu: String(index) },
          seconds,
        );
      });
      f.gauge(
        'hangar_vm_memory_rss_bytes',
        'Resident memory of the QEMU process of the VM.',
        base,
        s.rssBytes,
      );
      for (const b of s.block) {
        const labels = { ...base, device: b.device };
        f.counter('hangar_vm_block_read_bytes_total', 'Bytes read by a disk of the VM.', labels, b.rdBytes);
        f.counter(
          'hangar_vm_block_write_bytes_total',
          'Bytes written by a disk of the VM.',
          labels,
          b.wrBytes,
        );
        f.counter(
          'hangar_vm_block_read_requests_total',
          'Read requests of a disk of the VM.',
          labels,
          b.rdOps,
        );
        f.counter(
          'hangar_vm_block_write_requests_total',
          'Write requests of a disk of the VM.',
          labels,
          b.wrOps,
        );
      }
      for (const n of s.nics) {
        const labels = { ...base, interface: n.name, ifname: n.ifname };
        f.counter(
          'hangar_vm_network_receive_bytes_total',
          'Bytes received by a NIC of the VM.',
          labels,
          n.rxBytes,
        );
        f.counter(
          'hangar_vm_network_transmit_bytes_total',
          'Bytes sent by a NIC of the VM.',
          labels,
          n.txBytes,
        );
        f.counter(
          'hangar_vm_network_receive_packets_total',
          'Packets received by a NIC of the VM.',
          labels,
          n.rxPackets,
        );
        f.counter(
          'hangar_vm_network_transmit_packets_total',
          'Packets sent by a NIC of the VM.',
          labels,
          n.txPackets,
        );
      }
    }
    for (const [state, count] of perState)
      f.gauge('hangar_vms', 'Live VMs by observed state.', { state }, count);
    return f.all();
  }
}

const MIB = 1024 * 1024;

/** Collects samples per family, keeping the order in which families first appear. */
class Families {
  private readonly byName = new Map<
    string,
    { help: string; type: 'counter' | 'gauge'; samples: PrometheusSample[] }
  >();

  gauge(name: string, help: string, labels: Record<string, string>, value: number): void {
    this.add(name, help, 'gauge', labels, value);
  }

  counter(name: string, help: string, labels: Record<string, string>, value: number): void {
    this.add(name, help, 'counter', labels, value);
  }

  all(): PrometheusFamily[] {
    return [...this.byName].map(([name, f]) => ({ name, help: f.help, type: f.type, samples: f.samples }));
  }

  private add(
    name: string,
    help: string,
    type: 'counter' | 'gauge',
    labels: Record<string, string>,
    value: number,
  ): void {
    let family = this.byName.get(name);
    if (!family) {
      family = { help, type, samples: [] };
      this.byName.set(name, family);
    }
    family.samples.push({ labels, value });
  }
}

function seconds(iso: string): number {
  return Date.parse(iso) / 1000;
}

/** vCPU seconds per wall second between the two stored samples. */
function vmCpuUsage(stored: StoredSamples<VmMetricsSample>): number | null {
  const prev = stored.previous;
  if (!prev) return null;
  const wall = seconds(stored.latest.sampledAt) - seconds(prev.sampledAt);
  const used = stored.latest.cpuSecondsTotal - prev.cpuSecondsTotal;
  // A counter that went down means the VM restarted between the samples: no rate from that pair.
  if (wall <= 0 || used < 0) return null;
  return used / wall;
}

/** Share of non-idle CPU time between the two stored host samples. */
function hostCpuBusy(stored: StoredSamples<HostMetricsSample>): number | null {
  const prev = stored.previous;
  if (!prev) return null;
  const total = (s: HostMetricsSample) => Object.values(s.cpuSeconds).reduce((a, b) => a + b, 0);
  const idle = (s: HostMetricsSample) => s.cpuSeconds.idle + s.cpuSeconds.iowait;
  const dt = total(stored.latest) - total(prev);
  if (dt <= 0) return null;
  return Math.min(1, Math.max(0, 1 - (idle(stored.latest) - idle(prev)) / dt));
}
