/** styled-components' theme is the app's typed Theme: `props.theme.color.accent` is checked. */
import 'styled-components';
import type { Theme } from './theme.js';

declare module 'styled-components' {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type -- declaration merging needs an interface
  export interface DefaultTheme extends Theme {}
}
