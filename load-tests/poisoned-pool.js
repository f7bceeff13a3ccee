// poisoned-pool — placeholder
