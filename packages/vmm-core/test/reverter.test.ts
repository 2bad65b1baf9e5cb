import { describe, expect, it } from 'vitest';
import { Reverter } from '../src/util/reverter.js';

describe('Reverter', () => {
  it('runs undo steps in reverse order on fail', async () => {
    const calls: string[] = [];
    const reverter = new Reverter();
    reverter.add(() => {
      calls.push('first');
    });
    reverter.add(async () => {
      await new Promise((r) => setTimeout(r, 5));
      calls.push('second');
    });
    reverter.add(() => {
      calls.push('third');
    });
    expect(await reverter.fail()).toEqual([]);
    expect(calls).toEqual(['third', 'second', 'first']);
  });

  it('does nothing after success', async () => {
    const calls: string[] = [];
    const reverter = new Reverter();
    reverter.add(() => {
      calls.push('undo');
    });
    reverter.success();
    expect(await reverter.fail()).toEqual([]);
    expect(calls).toEqual([]);
  });

  it('runs every step even when some throw, and collects their errors', async () => {
    const calls: string[] = [];
    const reverter = new Reverter();
    reverter.add(() => {
      calls.push('a');
    }, 'step a');
    reverter.add(() => {
      throw new Error('b broke');
    }, 'step b');
    reverter.add(async () => {
      calls.push('c');
      throw new Error('c broke');
    });
    const failures = await reverter.fail();
    expect(calls).toEqual(['c', 'a']);
    expect(failures.map((f) => [f.label, (f.error as Error).message])).toEqual([
      [undefined, 'c broke'],
      ['step b', 'b broke'],
    ]);
    expect(reverter.errors).toHaveLength(2);
  });

  it('runs each step at most once', async () => {
    let count = 0;
    const reverter = new Reverter();
    reverter.add(() => {
      count++;
    });
    await reverter.fail();
    await reverter.fail();
    expect(count).toBe(1);
  });

  it('undoes completed steps when a later step throws in try/finally', async () => {
    const created = new Set<string>();
    const build = async (failAt: string | undefined) => {
      const reverter = new Reverter();
      try {
        for (const name of ['disk', 'seed', 'tap']) {
          if (name === failAt) throw new Error(`${name} failed`);
          created.add(name);
          reverter.add(() => {
            created.delete(name);
          });
        }
        reverter.success();
      } finally {
        await reverter.fail();
      }
    };
    await expect(build('tap')).rejects.toThrow('tap failed');
    expect([...created]).toEqual([]);
    await build(undefined);
    expect([...created]).toEqual(['disk', 'seed', 'tap']);
  });
});
