export type Listener<T> = (value: T) => void;

/** A small typed event emitter. A listener that throws does not stop the others: its error is rethrown asynchronously. */
export class Emitter<Events> {
  private _l: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};

  /** Calls `fn` for every `name` event; returns a function that removes it. */
  on<K extends keyof Events>(name: K, fn: Listener<Events[K]>): () => void {
    (this._l[name] ??= new Set()).add(fn);
    return () => this.off(name, fn);
  }

  off<K extends keyof Events>(name: K, fn: Listener<Events[K]>): void {
    this._l[name]?.delete(fn);
  }

  /** @internal */
  emit<K extends keyof Events>(name: K, value: Events[K]): void {
    const set = this._l[name];
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(value);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}
