package app

func (a *App) addGateway() error { return nil }
