package app

// TargetNames lists the modules c runs, in the order they are built.
func TargetNames(c Config) ([]string, error) {
	ms, err := c.targets()
	var out []string
	for _, m := range ms {
		out = append(out, m.name)
	}
	return out, err
}
