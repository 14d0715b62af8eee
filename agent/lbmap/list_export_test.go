package lbmap

// SetListBatch makes ListMaps ask for n entries a batch until the returned func is called.
func SetListBatch(n int) (restore func()) {
	old := listBatch
	listBatch = n
	return func() { listBatch = old }
}
