/** Components read stores through React's external-store contract; a store re-renders only its readers. */
import { createContext, useContext, useSyncExternalStore } from 'react';
import type { Store } from '../stores/store.js';
import type { Services } from './app-store.js';

export function useStore<S>(store: Store<S>): S {
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}

export const ServicesContext = createContext<Services | undefined>(undefined);

export function useServices(): Services {
  const services = useContext(ServicesContext);
  if (!services) throw new Error('useServices needs the ServicesContext of a signed-in app');
  return services;
}
