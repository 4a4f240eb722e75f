/**
 * The shared provider contract, run against real QEMU VMs (TCG). Each test gets a fresh
 * provider and state directory; instances are counted as the VMs the provider tracks plus any
 * QEMU process found in /proc for that directory, so a leaked process is counted too.
 */
import { providerContract } from './contract.ts';
import { qemuPidsUnder, qemuSubject } from './qemu-fixture.ts';

providerContract('qemu', async () => {
  const s = await qemuSubject({ powerdownGraceMs: 3_000 });
  return {
    provider: s.provider,
    makeRef: (i) => ({ resourceId: `vm${i}`, instanceKey: '*', groups: [] }),
    async countInstances() {
      const names = new Set(s.provider.vms().map((v) => v.name));
      for (const pid of await qemuPidsUnder(s.stateDir)) names.add(`pid:${pid}`);
      // A tracked VM's own process must not count twice.
      for (const v of s.provider.vms()) if (v.pid !== undefined) names.delete(`pid:${v.pid}`);
      return names.size;
    },
    holdBoots: () => s.provider.holdBoots(),
    readyTimeoutMs: 60_000,
    teardown: () => s.teardown(),
  };
});
