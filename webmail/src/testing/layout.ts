/**
 * For component tests in jsdom, which lays nothing out: a listbox gets a viewport of 600 px and the
 * height of its rows, and scrollTo moves it and fires `scroll`, as a browser does. The virtualizer of
 * the conversation list reads exactly these.
 */
const scrollTops = new WeakMap<Element, number>();
const saved = {
  scrollTo: HTMLElement.prototype.scrollTo,
  scrollTop: Object.getOwnPropertyDescriptor(Element.prototype, 'scrollTop')!,
  clientHeight: Object.getOwnPropertyDescriptor(Element.prototype, 'clientHeight')!,
  clientWidth: Object.getOwnPropertyDescriptor(Element.prototype, 'clientWidth')!,
  scrollHeight: Object.getOwnPropertyDescriptor(Element.prototype, 'scrollHeight')!,
};
const viewport = (size: number) =>
  function (this: Element) {
    return this.getAttribute('role') === 'listbox' ? size : 0;
  };
export function installListboxLayout(): void {
  Object.defineProperty(Element.prototype, 'clientHeight', { configurable: true, get: viewport(600) });
  Object.defineProperty(Element.prototype, 'clientWidth', { configurable: true, get: viewport(400) });
  // The scrolled content is the list's sizer: its height is the height of every row.
  Object.defineProperty(Element.prototype, 'scrollHeight', {
    configurable: true,
    get(this: Element) {
      return this.getAttribute('role') === 'listbox'
        ? parseFloat((this.firstElementChild as HTMLElement | null)?.style.height ?? '0')
        : 0;
    },
  });
  Object.defineProperty(Element.prototype, 'scrollTop', {
    configurable: true,
    get(this: Element) {
      return scrollTops.get(this) ?? 0;
    },
    set(this: Element, value: number) {
      scrollTops.set(this, value);
    },
  });
  HTMLElement.prototype.scrollTo = function (this: HTMLElement, options?: ScrollToOptions | number) {
    this.scrollTop = typeof options === 'number' ? options : (options?.top ?? this.scrollTop);
    this.dispatchEvent(new Event('scroll'));
  } as typeof HTMLElement.prototype.scrollTo;
}

export function uninstallListboxLayout(): void {
  HTMLElement.prototype.scrollTo = saved.scrollTo;
  for (const name of ['scrollTop', 'clientHeight', 'clientWidth', 'scrollHeight'] as const)
    Object.defineProperty(Element.prototype, name, saved[name]);
}
