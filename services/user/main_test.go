package user_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testenv.LeakOptions()...) }
