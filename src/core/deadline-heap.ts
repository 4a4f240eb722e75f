/**
 * A binary min-heap of items by deadline, each item knowing its own position so that it can
 * leave in O(log n) (a held request whose client left, or that was released). The hold queue
 * keeps one of these and one timer for the earliest deadline, instead of one timer per held
 * request: 10,000 held requests cost 10,000 array slots, not 10,000 timers and closures.
 */
export interface Deadlined {
  readonly deadline: number;
  /** Position in the heap; -1 when not in one. Written by the heap only. */
  heapIndex: number;
}

export class DeadlineHeap<T extends Deadlined> {
  readonly #items: T[] = [];

  get size(): number {
    return this.#items.length;
  }

  /** The item with the earliest deadline, left in place. */
  peek(): T | undefined {
    return this.#items[0];
  }

  push(item: T): void {
    item.heapIndex = this.#items.length;
    this.#items.push(item);
    this.#up(item.heapIndex);
  }

  /** Removes `item` when it is in the heap; harmless otherwise. */
  remove(item: T): void {
    const i = item.heapIndex;
    if (i < 0 || this.#items[i] !== item) return;
    item.heapIndex = -1;
    const last = this.#items.pop()!;
    if (i === this.#items.length) return;
    this.#items[i] = last;
    last.heapIndex = i;
    this.#down(i);
    this.#up(last.heapIndex);
  }

  #up(start: number): void {
    const items = this.#items;
    let i = start;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (items[parent]!.deadline <= items[i]!.deadline) break;
      this.#swap(i, parent);
      i = parent;
    }
  }

  #down(start: number): void {
    const items = this.#items;
    let i = start;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let least = i;
      if (l < items.length && items[l]!.deadline < items[least]!.deadline) least = l;
      if (r < items.length && items[r]!.deadline < items[least]!.deadline) least = r;
      if (least === i) return;
      this.#swap(i, least);
      i = least;
    }
  }

  #swap(a: number, b: number): void {
    const items = this.#items;
    const x = items[a]!;
    const y = items[b]!;
    items[a] = y;
    items[b] = x;
    x.heapIndex = b;
    y.heapIndex = a;
  }
}
